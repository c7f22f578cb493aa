"""Evaluate a folder of predictions against a folder of references: per-case CSV, summary JSON, markdown.

    python scripts/evaluate.py --pred runs/pred --ref data/labels --labels bundle/configs/metadata.json
    python scripts/evaluate.py --pred out --ref out --pred-glob "*_pred.nii.gz" --ref-glob "*_gt.nii.gz" \\
        --num-classes 9 --convention transunet
    python scripts/evaluate.py --pred cs_pred --ref cityscapes/gtFine/val --convention cityscapes

Files are matched by case id: the file name without the part after the last ``*`` of the glob (by default the
extension: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ``.png``), searched recursively.
Images are read with SimpleITK (NIfTI that SimpleITK refuses, e.g. with non-orthonormal directions, with
nibabel), in SimpleITK's axis order, with the voxel spacing of the header. Each case is scored by
:func:`~medseg.metrics.scoring.score_label_maps` under a :class:`~medseg.metrics.conventions.Convention`, or in
``cityscapes`` mode by the official class-IoU algorithm (:mod:`medseg.metrics.cityscapes`).

Outputs (``--format``): ``metrics.csv`` / ``metrics.tsv`` (one row per case and structure), ``summary.json``
(mean, std, median and n per structure and overall, plus the convention in words), ``summary.md``,
``summary.html``, ``summary.tex``; with ``--compare-to`` a paired comparison against an earlier ``metrics.csv``
(``comparison.csv`` and ``comparison.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from .conventions import CONVENTIONS, Convention, get_convention
from .scoring import score_label_maps, size_columns
from .stats import paired_comparison

__all__ = [
    "FORMATS",
    "SUPPORTED_SUFFIXES",
    "Evaluation",
    "LabelImage",
    "build_parser",
    "evaluate_folders",
    "find_cases",
    "main",
    "read_label_image",
    "read_label_map",
    "run",
]

SUPPORTED_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png")
#: Output formats and the file each writes.
FORMATS = {
    "csv": "metrics.csv",
    "tsv": "metrics.tsv",
    "json": "summary.json",
    "md": "summary.md",
    "html": "summary.html",
    "latex": "summary.tex",
}
CITYSCAPES_GLOBS = ("*_labelIds.png", "*_gtFine_labelIds.png")  # prediction, reference
#: Relative tolerance when comparing the spacing of a prediction with its reference's (header rounding).
_SPACING_RTOL = 1e-4


@dataclass(frozen=True)
class LabelImage:
    """A label map as read from a file: integer ``array`` (SimpleITK axis order) and ``spacing`` per axis (mm)."""

    array: np.ndarray
    spacing: tuple[float, ...]
    path: Path


def _as_label_array(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path} holds {array.dtype} values; expected an integer label map")
    if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
        raise ValueError(f"{path} holds non-integer values; is it an image or a probability map, not a label map?")
    return array.astype(np.int32)


def _read_with_nibabel(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj)
    zooms = image.header.get_zooms()[: array.ndim]
    # SimpleITK's order: the reverse of the file's (x, y, z)
    return np.ascontiguousarray(array.transpose(tuple(reversed(range(array.ndim))))), tuple(reversed(zooms))


class _NotALabelMap(ValueError):
    """A file that reads fine but holds no label map (colour or vector pixels)."""


def _read_png(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("1", "L", "P", "I", "I;16"):
            raise _NotALabelMap(f"{path} is a {image.mode} image; expected a single-channel label PNG")
        return np.array(image), (1.0, 1.0)


def _read_with_simpleitk(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        components = image.GetNumberOfComponentsPerPixel()
        raise _NotALabelMap(f"{path} has {components} components per voxel; expected a label map")
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def read_label_image(path: str | Path) -> LabelImage:
    """Read a label map with its spacing; errors name the file.

    PNG is read with PIL as the Cityscapes evaluation reads it (palette images give their indices; spacing 1);
    NIfTI, NRRD and MHA/MHD with SimpleITK, and NIfTI that SimpleITK refuses (non-orthonormal direction
    cosines, for instance) with nibabel, in SimpleITK's axis order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it cannot be read, has colour/vector pixels, is not 2D/3D, or holds non-integer values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file does not exist: {path}")
    name = path.name.lower()
    try:
        if name.endswith(".png"):
            array, spacing = _read_png(path)
        else:
            try:
                array, spacing = _read_with_simpleitk(path)
            except RuntimeError:
                if not name.endswith((".nii", ".nii.gz")):
                    raise
                array, spacing = _read_with_nibabel(path)
    except _NotALabelMap:
        raise
    except Exception as err:  # any reader failure (truncated gzip, bad header, ...) becomes one message
        message = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise ValueError(f"cannot read {path}: {type(err).__name__}: {message}") from err
    if array.ndim not in (2, 3):
        raise ValueError(f"{path} has shape {array.shape}; expected a 2D or 3D label map")
    return LabelImage(_as_label_array(array, path), tuple(float(s) for s in spacing), path)


def _case_id(name: str, tail: str) -> str:
    return name[: len(name) - len(tail)] if tail else name


def find_cases(folder: str | Path, glob: str | None = None) -> dict[str, Path]:
    """Case id → file for the files under ``folder`` (recursive) matching ``glob`` (default: any supported suffix).

    The case id is the file name without the part after the glob's last ``*``.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: the glob has no ``*``, or two files give the same case id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder does not exist: {folder}")
    globs = [glob] if glob is not None else [f"*{suffix}" for suffix in SUPPORTED_SUFFIXES]
    cases: dict[str, Path] = {}
    for pattern in globs:
        if "*" not in pattern:
            raise ValueError(f"glob {pattern!r} must contain a '*' standing for the case id")
        tail = pattern[pattern.rindex("*") + 1 :]
        for path in sorted(p for p in folder.rglob(pattern) if p.is_file()):
            case = _case_id(path.name, tail)
            if case in cases:
                raise ValueError(f"case {case!r} matches two files under {folder}: {cases[case]} and {path}")
            cases[case] = path
    return cases


def read_label_map(path: str | Path) -> dict[int, str]:
    """Label value → structure name from a JSON file or a MONAI bundle folder; background (0) left out.

    Accepted: a flat ``{"1": "spleen", ...}``; a MONAI bundle ``metadata.json`` (or a bundle folder holding
    ``configs/metadata.json``): the first ``channel_def`` of ``network_data_format.outputs``; a Decathlon
    ``dataset.json`` (``"labels": {"0": "background", ...}``) or an nnU-Net v2 one (``"labels": {"spleen": 1}``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"label map file does not exist: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"label map {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"label map {path} must hold a JSON object")
    if "network_data_format" in data:
        outputs = data["network_data_format"].get("outputs", {})
        definitions = [o["channel_def"] for o in outputs.values() if isinstance(o, dict) and "channel_def" in o]
        if not definitions:
            raise ValueError(f"bundle metadata {path} has no channel_def in network_data_format.outputs")
        mapping = definitions[0]
    elif "labels" in data:
        mapping = data["labels"]
        if mapping and all(isinstance(v, int) for v in mapping.values()):  # nnU-Net v2: name -> value
            mapping = {str(v): k for k, v in mapping.items()}
        elif any(isinstance(v, list) for v in mapping.values()):
            raise ValueError(f"label map {path} defines regions (label lists); only plain labels are supported")
    else:
        mapping = data
    try:
        labels = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"label map {path} must map integer label values to names, got {mapping!r}") from err
    labels.pop(0, None)
    if not labels or min(labels) < 0:
        raise ValueError(f"label map {path} gives no positive label values: {mapping!r}")
    return dict(sorted(labels.items()))


def _check_pair(prediction: LabelImage, reference: LabelImage) -> None:
    if prediction.array.shape != reference.array.shape:
        raise ValueError(
            f"prediction shape {prediction.array.shape} ({prediction.path}) differs from reference shape "
            f"{reference.array.shape} ({reference.path})"
        )
    if not np.allclose(prediction.spacing, reference.spacing, rtol=_SPACING_RTOL, atol=0.0):
        raise ValueError(
            f"prediction spacing {prediction.spacing} ({prediction.path}) differs from reference spacing "
            f"{reference.spacing} ({reference.path})"
        )


def _read_pair(pred_path: Path | None, ref_path: Path) -> tuple[LabelImage, LabelImage]:
    reference = read_label_image(ref_path)
    if pred_path is None:  # --allow-missing: an empty prediction
        return LabelImage(np.zeros_like(reference.array), reference.spacing, Path("<missing>")), reference
    prediction = read_label_image(pred_path)
    _check_pair(prediction, reference)
    return prediction, reference


def _score_volume_case(
    case: str,
    pred_path: Path | None,
    ref_path: Path,
    labels: Mapping[int, str],
    convention: Convention,
    nsd_tolerance: float,
) -> list[dict[str, object]]:
    try:
        prediction, reference = _read_pair(pred_path, ref_path)
        rows = score_label_maps(prediction.array, reference.array, reference.spacing, labels, convention, nsd_tolerance)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"case {case!r}: {err}") from err
    return [{"case": case, **row, "missing": pred_path is None} for row in rows]


def _score_cityscapes_case(case: str, pred_path: Path | None, ref_path: Path) -> list[dict[str, object]]:
    from .cityscapes import class_counts, class_iou, evaluated_classes, labelid_confusion

    try:
        prediction, reference = _read_pair(pred_path, ref_path)
        counts = class_counts(labelid_confusion(prediction.array, reference.array))
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"case {case!r}: {err}") from err
    iou = class_iou(counts)
    classes = evaluated_classes()
    return [
        {
            "case": case,
            "label": label_id,
            "train_id": classes[label_id][0],
            "structure": classes[label_id][1],
            "iou": iou[label_id],
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "missing": pred_path is None,
        }
        for label_id, (tp, fp, fn) in counts.items()
    ]


def _map_cases(
    score: Callable[..., list[dict[str, object]]],
    jobs: Sequence[tuple[str, Path | None, Path]],
    workers: int,
    progress: bool,
) -> list[dict[str, object]]:
    """Score every job (case, prediction, reference), in ``workers`` processes, with a progress bar."""
    results: list[list[dict[str, object]]] = [[] for _ in jobs]
    with tqdm(total=len(jobs), desc="cases", unit="case", disable=not progress, file=sys.stderr) as bar:
        if workers <= 1:
            for index, job in enumerate(jobs):
                results[index] = score(*job)
                bar.update()
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            try:
                futures = {pool.submit(score, *job): index for index, job in enumerate(jobs)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            finally:
                pool.shutdown(cancel_futures=True)
    return [row for rows in results for row in rows]


def _stats(values: pd.Series) -> dict[str, float | int]:
    """mean, sample std (ddof 1), median and n of the non-NaN values."""
    present = values.dropna()
    return {
        "mean": float(present.mean()) if len(present) else math.nan,
        "std": float(present.std(ddof=1)) if len(present) > 1 else math.nan,
        "median": float(present.median()) if len(present) else math.nan,
        "n": len(present),
    }


def _json_ready(value: Any) -> Any:
    """NaN → None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass
class Evaluation:
    """The result of :func:`evaluate_folders`: the per-case ``table``, its ``summary`` and the metric columns."""

    table: pd.DataFrame
    summary: dict[str, Any]
    metric_columns: list[str]

    def summary_table(self) -> pd.DataFrame:
        """Structures (then ``overall``) × metrics as ``mean ± std`` strings (cityscapes: pooled IoU)."""
        if self.summary["convention"]["name"] == "cityscapes":
            rows = {name: {"IoU": f"{s['iou']:.4f}"} for name, s in self.summary["per_structure"].items()}
            rows["mean (mIoU)"] = {"IoU": f"{self.summary['overall']['miou']:.4f}"}
            return pd.DataFrame.from_dict(rows, orient="index").rename_axis("class")

        def cell(stat: dict[str, Any]) -> str:
            mean, std = stat["mean"], stat["std"]
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                return "n/a"
            return f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"

        groups = {**self.summary["per_structure"], "overall": self.summary["overall"]}
        return pd.DataFrame.from_dict(
            {name: {c: cell(stats[c]) for c in self.metric_columns} for name, stats in groups.items()},
            orient="index",
        ).rename_axis("structure")

    def markdown(self) -> str:
        """The summary table with the conventions it was computed under, as markdown."""
        convention = self.summary["convention"]
        lines = [
            f"# Evaluation: {convention['name']} convention",
            "",
            self.summary_table().to_markdown(),
            "",
            f"{self.summary['n_cases']} cases"
            + (
                f"; predictions missing (scored as empty): {', '.join(self.summary['missing'])}"
                if self.summary["missing"]
                else ""
            )
            + ".",
            "",
            "## Conventions",
            "",
            f"- {convention['description']}",
        ]
        if convention["name"] != "cityscapes":
            lines.append(
                "- Cells: mean ± sample std over cases; overall: mean of the structure means ± std over cases."
            )
            lines.append(f"- HD95: {convention['hd95']}.")
            lines.append(f"- Surface: {convention['surface']}; distances in {convention['distance_unit']}.")
            for case, policy in convention["empty_policy"].items():
                text = ", ".join(f"{k} = {v}" for k, v in policy.items())
                lines.append(f"- {case.replace('_', ' ')}: {text}.")
            if "nsd_tolerance_mm" in convention:
                lines.append(f"- NSD tolerance: {convention['nsd_tolerance_mm']} mm.")
            lines.append(f"- {convention['background'].capitalize()}.")
        return "\n".join(lines) + "\n"

    def write(self, output_dir: str | Path, formats: Sequence[str] = ("csv", "json", "md")) -> list[Path]:
        """Write the requested formats (:data:`FORMATS`) into ``output_dir``; returns the files written."""
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown:
            raise ValueError(f"unknown formats {unknown}; choose from {sorted(FORMATS)}")
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt in dict.fromkeys(formats):
            path = output_dir / FORMATS[fmt]
            if fmt in ("csv", "tsv"):
                self.table.to_csv(path, index=False, sep="," if fmt == "csv" else "\t")
            elif fmt == "json":
                path.write_text(json.dumps(_json_ready(self.summary), indent=2) + "\n")
            elif fmt == "md":
                path.write_text(self.markdown())
            elif fmt == "html":
                path.write_text(self.summary_table().to_html())
            else:
                path.write_text(self.summary_table().to_latex())
            written.append(path)
        return written


def _summarize(table: pd.DataFrame, columns: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per structure: stats of every column; overall: mean of structure means, std/median of per-case means."""
    ordered = table.sort_values(["label", "case"], kind="stable")
    per_structure = {
        str(name): {c: _stats(group[c]) for c in columns} for name, group in ordered.groupby("structure", sort=False)
    }
    scores = [c for c in columns if c in table.columns and not c.startswith(("volume_", "area_"))]
    case_means = table.groupby("case")[scores].mean()
    overall = {}
    for c in scores:
        # the protocol number (TransUNet: mean over organs of the organ means; nnU-Net: foreground_mean)
        overall[c] = {
            **_stats(case_means[c]),
            "mean": float(np.mean([per_structure[s][c]["mean"] for s in per_structure])),
        }
    return per_structure, overall


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: Mapping[int, str] | None = None,
    convention: str = "clinical",
    nsd_tolerance: float = 1.0,
    surface: str = "voxels",
    workers: int = 1,
    allow_missing: bool = False,
    pred_glob: str | None = None,
    ref_glob: str | None = None,
    progress: bool = True,
) -> Evaluation:
    """Score every reference case against its prediction and summarise.

    Args:
        pred_dir: folder of predicted label maps (searched recursively).
        ref_dir: folder of reference label maps.
        labels: label value → structure name (:func:`read_label_map`); not used in ``cityscapes`` mode.
        convention: ``clinical``, ``transunet``, ``nnunet`` (:mod:`~medseg.metrics.conventions`) or
            ``cityscapes`` (labelId PNGs, official class IoU).
        nsd_tolerance: NSD tolerance in mm (``clinical``).
        surface: ``voxels`` or ``surfels`` (``clinical`` only; see :mod:`~medseg.metrics.surface`).
        workers: processes scoring cases in parallel.
        allow_missing: score a reference without prediction as an empty prediction instead of raising.
        pred_glob: file-name glob of predictions; the part after the last ``*`` is cut off to give the case id.
        ref_glob: the same for references.
        progress: show a progress bar over cases (stderr).

    Raises:
        ValueError: a prediction is missing (without ``allow_missing``), or a case cannot be scored (unreadable
            file, shape or spacing mismatch); the message names the case.
    """
    cityscapes = convention == "cityscapes"
    if cityscapes:
        if labels is not None:
            raise ValueError("cityscapes mode scores the 19 official classes; do not pass labels")
        if surface != "voxels":
            raise ValueError("surface does not apply to cityscapes mode")
        pred_glob = pred_glob or CITYSCAPES_GLOBS[0]
        ref_glob = ref_glob or CITYSCAPES_GLOBS[1]
    else:
        scoring = get_convention(convention, surface)  # type: ignore[arg-type]
        if labels is None:
            raise ValueError("labels are needed: pass a label map (label value -> name)")
        if len(set(labels.values())) != len(labels):
            raise ValueError(f"structure names must be unique, got {dict(labels)}")
        if not (math.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
            raise ValueError(f"NSD tolerance must be finite and >= 0 mm, got {nsd_tolerance}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    references = find_cases(ref_dir, ref_glob)
    if not references:
        raise ValueError(f"no reference files matching {ref_glob or 'a supported suffix'} under {ref_dir}")
    predictions = find_cases(pred_dir, pred_glob)
    missing = sorted(set(references) - set(predictions))
    if missing and not allow_missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(
            f"no prediction under {pred_dir} for cases {shown} (pass --allow-missing to score them as failures)"
        )
    unmatched = sorted(set(predictions) - set(references))
    if unmatched:
        warnings.warn(f"predictions without reference ignored: {', '.join(unmatched[:10])}", stacklevel=2)
    jobs = [(case, predictions.get(case), references[case]) for case in sorted(references)]
    if cityscapes:
        rows = _map_cases(_score_cityscapes_case, jobs, workers, progress)
    else:
        score = partial(_score_volume_case, labels=labels, convention=scoring, nsd_tolerance=nsd_tolerance)
        rows = _map_cases(score, jobs, workers, progress)
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {"n_cases": len(jobs), "cases": sorted(references), "missing": missing}
    if cityscapes:
        return _cityscapes_evaluation(table, summary)
    ndim_columns = [c for c in size_columns(3) + size_columns(2) if c in table.columns]
    columns = list(scoring.columns) + ndim_columns
    per_structure, overall = _summarize(table, columns)
    summary = {
        "convention": scoring.describe(nsd_tolerance),
        **summary,
        "per_structure": per_structure,
        "overall": overall,
    }
    return Evaluation(table=table, summary=summary, metric_columns=list(scoring.columns))


def _cityscapes_evaluation(table: pd.DataFrame, summary: dict[str, Any]) -> Evaluation:
    from .cityscapes import class_iou, mean_iou

    totals = table.groupby("label", sort=True)[["tp", "fp", "fn"]].sum()
    iou = class_iou({int(k): (int(r.tp), int(r.fp), int(r.fn)) for k, r in totals.iterrows()})
    names = table.drop_duplicates("label").set_index("label")["structure"]
    per_structure = {
        names[k]: {
            "iou": iou[k],
            "tp": int(totals.loc[k, "tp"]),
            "fp": int(totals.loc[k, "fp"]),
            "fn": int(totals.loc[k, "fn"]),
        }
        for k in iou
    }
    convention = {
        "name": "cityscapes",
        "description": (
            "Cityscapes pixel-level semantic labelling (Cordts et al., CVPR 2016), the official "
            "evalPixelLevelSemanticLabeling algorithm: labelId confusion matrix summed over images; per class "
            "IoU = TP/(TP+FP+FN) where false positives on ignored ground truth are not counted; classes absent from "
            "ground truth and prediction (0/0) are left out of the mIoU. Per-image rows hold the counts."
        ),
    }
    summary = {"convention": convention, **summary, "per_structure": per_structure, "overall": {"miou": mean_iou(iou)}}
    return Evaluation(table=table, summary=summary, metric_columns=["iou"])


def build_parser() -> argparse.ArgumentParser:
    """The ``evaluate`` command line (also used by ``medseg evaluate``)."""
    parser = argparse.ArgumentParser(
        prog="evaluate",
        description="Score predicted label maps against references (Dice, IoU, HD, HD95, ASSD, NSD, volumes).",
    )
    parser.add_argument("--pred", required=True, type=Path, help="folder of predictions (searched recursively)")
    parser.add_argument("--ref", required=True, type=Path, help="folder of references")
    names = parser.add_mutually_exclusive_group()
    names.add_argument(
        "--labels", type=Path, help="label map JSON (flat, bundle metadata, dataset.json) or bundle folder"
    )
    names.add_argument("--num-classes", type=int, help="score labels 1..N-1, named label_1 ...")
    parser.add_argument(
        "--convention",
        default="clinical",
        choices=[*CONVENTIONS, "cityscapes"],
        help="scoring convention (default clinical; see docs/evaluation.md)",
    )
    parser.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1)")
    parser.add_argument("--surface", default="voxels", choices=["voxels", "surfels"], help="surface representation")
    parser.add_argument("--pred-glob", help="prediction file glob; text after the last * is cut to give the case id")
    parser.add_argument("--ref-glob", help="reference file glob (same rule)")
    parser.add_argument("--output", type=Path, help="output folder (default: <pred>/evaluation)")
    parser.add_argument(
        "--format",
        nargs="+",
        default=["csv", "json", "md"],
        choices=sorted(FORMATS),
        dest="formats",
        help="outputs to write (default: csv json md)",
    )
    parser.add_argument("--workers", type=int, default=1, help="cases scored in parallel processes")
    parser.add_argument("--allow-missing", action="store_true", help="score missing predictions as empty")
    parser.add_argument("--compare-to", type=Path, help="a baseline metrics.csv: paired Wilcoxon test and bootstrap CI")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (with --compare-to)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.labels is not None:
        labels: dict[int, str] | None = read_label_map(args.labels)
    elif args.num_classes is not None:
        if args.num_classes < 2:
            raise ValueError(f"--num-classes must be >= 2 (background and one structure), got {args.num_classes}")
        labels = {k: f"label_{k}" for k in range(1, args.num_classes)}
    elif args.convention == "cityscapes":
        labels = None
    else:
        raise ValueError("pass --labels (a label map JSON or bundle) or --num-classes")
    evaluation = evaluate_folders(
        args.pred,
        args.ref,
        labels,
        convention=args.convention,
        nsd_tolerance=args.nsd_tolerance,
        surface=args.surface,
        workers=args.workers,
        allow_missing=args.allow_missing,
        pred_glob=args.pred_glob,
        ref_glob=args.ref_glob,
        progress=not args.no_progress,
    )
    output = args.output if args.output is not None else args.pred / "evaluation"
    written = evaluation.write(output, args.formats)
    if args.compare_to is not None:
        baseline = pd.read_csv(args.compare_to)
        comparison = paired_comparison(evaluation.table, baseline, evaluation.metric_columns, seed=args.seed)
        comparison.to_csv(output / "comparison.csv", index=False)
        (output / "comparison.md").write_text(
            f"# Paired comparison against {args.compare_to}\n\nmean difference = method − baseline; 95% percentile "
            f"bootstrap CI (10000 resamples, seed {args.seed}); two-sided Wilcoxon signed-rank p (unadjusted).\n\n"
            + comparison.to_markdown(index=False, floatfmt=".4g")
            + "\n"
        )
        written += [output / "comparison.csv", output / "comparison.md"]
    print(evaluation.summary_table().to_markdown())
    print("written: " + ", ".join(str(p) for p in written))


def run(args: argparse.Namespace) -> int:
    """Evaluate as ``args`` (from :func:`build_parser`) says, write the outputs, print the summary table.

    Returns the exit status: 0, or 2 after printing the message of a bad input (missing case, unreadable file,
    shape or spacing mismatch, bad label map) to stderr. ``medseg evaluate`` can call it with its own parsed
    arguments (``sub.add_parser("evaluate", parents=[build_parser()], add_help=False)``).
    """
    try:
        _run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` (default ``sys.argv[1:]``) and :func:`run`; returns the exit status."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
