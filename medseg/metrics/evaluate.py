"""Evaluate a folder of predictions against a folder of references: per-case CSV, summary JSON, markdown.

    medseg evaluate --pred medseg_demo/predictions --ref medseg_demo/data/RawData/Training/label \\
        --labels synapse_unet3d --only-predicted
    python scripts/evaluate.py --pred runs/pred --ref data/labels --labels bundle/configs/metadata.json
    python scripts/evaluate.py --pred out --ref out --num-classes 9 --convention transunet
    python scripts/evaluate.py --pred cs_pred --ref cityscapes/gtFine/val --convention cityscapes

Cases are paired by case id across naming schemes (:mod:`~medseg.metrics.cases`: ``img0007_seg.nii.gz`` with
``label0007.nii.gz``). Files are read whole (:mod:`~medseg.metrics.reading`), label values checked against the
label space (:mod:`~medseg.metrics.labels`; ``--labels <bundle>`` maps raw references through the bundle's
``label_mapping``), grids compared (:mod:`~medseg.metrics.geometry`), and each case scored by
:func:`~medseg.metrics.scoring.score_label_maps` under a :class:`~medseg.metrics.conventions.Convention`, or in
``cityscapes`` mode by the official class-IoU algorithm (:mod:`medseg.metrics.cityscapes`). Whatever cannot be
scored correctly is refused with the case, the file and the fix; the refusals are tabled in docs/evaluation.md.

Outputs (``--format``): ``metrics.csv`` / ``metrics.tsv`` (one row per case and structure), ``summary.json``,
``summary.md``, ``summary.html``, ``summary.tex`` (:mod:`~medseg.metrics.report`); with ``--compare-to`` a paired
comparison against an earlier ``metrics.csv`` on the same cases (``comparison.csv`` and ``comparison.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from .cases import SUPPORTED_SUFFIXES, case_id, find_cases
from .conventions import CONVENTIONS, SURFACE_DISTANCE_METRICS, Convention, get_convention
from .geometry import grid_mismatch, resample_to_reference
from .labels import (
    LabelSpace,
    RefSpace,
    check_values,
    classify_reference,
    label_space,
    prepare_pair,
    present_values,
    read_label_map,
)
from .reading import LabelImage, read_label_image
from .report import FORMATS, Evaluation, atomic_write_text, summarize
from .scoring import score_label_maps, size_columns
from .stats import paired_comparison, to_markdown

__all__ = [
    "FORMATS",
    "SUPPORTED_SUFFIXES",
    "CasePair",
    "Evaluation",
    "LabelImage",
    "build_parser",
    "compare_to_baseline",
    "evaluate_folders",
    "evaluate_pairs",
    "find_cases",
    "main",
    "pair_cases",
    "read_label_image",
    "read_label_map",
    "run",
]

logger = logging.getLogger(__name__)

CITYSCAPES_GLOBS = ("*_labelIds.png", "*_gtFine_labelIds.png")  # prediction, reference
#: One folder holding predictions and references (TransUNet's test_save_path, synapse_transunet's ``eval/``).
SAME_FOLDER_GLOBS = (tuple(f"*_pred{s}" for s in SUPPORTED_SUFFIXES), tuple(f"*_gt{s}" for s in SUPPORTED_SUFFIXES))
_PREDICTION_HINT = "Predictions hold the scored labels: pass the right --labels, or --ignore-labels V for void values."
_REFERENCE_HINT = (
    "Raw dataset labels (e.g. BTCV 0..13)? --labels <bundle> maps them as the bundle's training does; "
    "--ignore-labels V leaves void values out."
)


@dataclass(frozen=True)
class CasePair:
    """One case to score: its id, the prediction file (``None``: missing, scored as empty) and the reference."""

    case: str
    prediction: Path | None
    reference: Path


def _show(items: Iterable[object], limit: int = 10) -> str:
    items = list(items)
    return ", ".join(str(i) for i in items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def pair_cases(
    pred_dir: str | Path,
    ref_dir: str | Path,
    pred_glob: str | None = None,
    ref_glob: str | Sequence[str] | None = None,
    allow_missing: bool = False,
    only_predicted: bool = False,
) -> tuple[list[CasePair], list[str]]:
    """Pair predictions with references by case id; returns the pairs and the references left out.

    A reference without prediction raises, unless ``allow_missing`` (scored as an empty prediction) or
    ``only_predicted`` (left out, returned: the reference folder may hold more cases than were predicted, e.g. a
    dataset's training labels). One folder for both without globs: predictions ``*_pred``, references ``*_gt``.
    """
    if allow_missing and only_predicted:
        raise ValueError("--allow-missing scores every reference, --only-predicted only the predicted ones: pick one")
    if pred_glob is None and ref_glob is None and Path(pred_dir).resolve() == Path(ref_dir).resolve():
        pred_glob, ref_glob = SAME_FOLDER_GLOBS
    references = find_cases(ref_dir, ref_glob)
    if not references:
        raise ValueError(f"no reference files matching {ref_glob or 'a supported suffix'} under {ref_dir}")
    predictions = find_cases(pred_dir, pred_glob)
    left_out: list[str] = []
    if only_predicted:
        if not set(predictions) & set(references):
            raise ValueError(
                f"no prediction under {pred_dir} matches a reference under {ref_dir} by case id (predictions: "
                f"{_show(sorted(predictions))}; references: {_show(sorted(references))}); see docs/evaluation.md"
            )
        left_out = sorted(set(references) - set(predictions))
        references = {case: path for case, path in references.items() if case in predictions}
    missing = sorted(set(references) - set(predictions))
    if missing and not allow_missing:
        raise ValueError(
            f"no prediction under {pred_dir} for cases {_show(missing)} (case ids from the file names, see "
            "docs/evaluation.md); pass --allow-missing to score them as failures, or --only-predicted if the "
            "reference folder holds more cases than were predicted"
        )
    unmatched = sorted(set(predictions) - set(references))
    if unmatched:
        warnings.warn(f"predictions without reference ignored: {_show(unmatched)}", stacklevel=2)
    return [CasePair(case, predictions.get(case), references[case]) for case in sorted(references)], left_out


def _reference_mode(pairs: Sequence[CasePair], space: LabelSpace, ref_space: RefSpace) -> dict[str, Any]:
    """Whether the references are raw (mapped through the bundle's ``label_mapping``) or in the bundle's labels.

    ``auto`` reads references in order until one fits only one of the two; none that does, and some that would
    score differently read either way, is an error.
    """
    if ref_space not in ("auto", "raw", "bundle"):
        raise ValueError(f"ref_space must be 'auto', 'raw' or 'bundle', got {ref_space!r}")
    if space.mapping is None:
        if ref_space != "auto":
            raise ValueError(f"--ref-space {ref_space} needs a bundle with a label_mapping; {space.source} has none")
        return {"mode": "none", "why": "no label mapping"}
    if ref_space != "auto":
        return {"mode": ref_space, "why": f"--ref-space {ref_space}"}
    ambiguous = []
    for pair in pairs:
        try:
            fit = classify_reference(present_values(read_label_image(pair.reference).array), space)
        except (OSError, ValueError) as err:
            raise ValueError(f"case {pair.case!r}: reference {pair.reference}: {err}") from err
        if fit in ("raw", "bundle"):
            return {"mode": fit, "why": f"decided from the values of {pair.reference}"}
        if fit == "ambiguous":
            ambiguous.append(str(pair.reference))
    if not ambiguous:
        return {"mode": "bundle", "why": "the label mapping leaves every reference value unchanged"}
    raise ValueError(
        f"every reference fits both the raw labels and the bundle's labels, and they score differently read one "
        f"way or the other (e.g. {ambiguous[0]}); say which they are: --ref-space raw (mapped through the bundle's "
        "label_mapping, as its training maps them) or --ref-space bundle (already in the bundle's labels)"
    )


def _check_reference(values: np.ndarray, space: LabelSpace, mode: dict[str, Any], path: Path) -> str:
    """Refuse reference values the label space does not define; returns how the reference fits (under a mapping)."""
    if mode["mode"] == "none":
        check_values(values, space.allowed, path, "reference", _REFERENCE_HINT)
        return "bundle"
    try:
        fit = classify_reference(values, space)
    except ValueError as err:
        raise ValueError(f"reference {path} {err}") from err
    if {fit, mode["mode"]} == {"raw", "bundle"}:
        other = space.allowed if mode["mode"] == "bundle" else space.allowed_raw
        odd = sorted(set(values.tolist()) - set(other))
        raise ValueError(
            f"reference {path} holds values {_show(odd)} that the {mode['mode']} labels do not define, while the "
            f"references are read as {mode['mode']} ({mode['why']}); keep one kind of reference per folder, or say "
            "which with --ref-space"
        )
    return fit


def _score_volume_case(
    pair: CasePair,
    space: LabelSpace,
    mode: dict[str, Any],
    convention: Convention,
    nsd_tolerance: float,
    resample: bool,
) -> tuple[list[dict[str, object]], dict[str, Any]]:
    try:
        reference = read_label_image(pair.reference)
        fit = _check_reference(present_values(reference.array), space, mode, pair.reference)
        resampled = None
        if pair.prediction is None:  # --allow-missing: an empty prediction
            prediction = dataclasses.replace(reference, array=np.zeros_like(reference.array), path=Path("<missing>"))
        else:
            prediction = read_label_image(pair.prediction)
            values = present_values(prediction.array)
            check_values(values, space.allowed, pair.prediction, "prediction", _PREDICTION_HINT)
            resampled = grid_mismatch(prediction, reference)
            if resampled is not None and not resample:
                raise ValueError(
                    f"prediction {pair.prediction} and reference {pair.reference} lie on different grids: "
                    f"prediction {resampled}. Voxel-wise scores would compare different places; write the "
                    "prediction on the reference grid, or pass --resample-pred to resample it (nearest neighbour)"
                )
            if resampled is not None:
                prediction = resample_to_reference(prediction, reference)
        pred, ref = prepare_pair(prediction.array, reference.array, space, mapped=mode["mode"] == "raw")
        rows = score_label_maps(pred, ref, reference.spacing, space.names, convention, nsd_tolerance)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"case {pair.case!r}: {err}") from err
    extra = {"missing": pair.prediction is None, "resampled": resampled is not None}
    return [{"case": pair.case, **row, **extra} for row in rows], {"fit": fit, "resampled": resampled}


def _score_cityscapes_case(pair: CasePair) -> tuple[list[dict[str, object]], dict[str, Any]]:
    from .cityscapes import class_counts, class_iou, evaluated_classes, labelid_confusion

    try:
        reference = read_label_image(pair.reference)
        if pair.prediction is None:
            prediction = dataclasses.replace(reference, array=np.zeros_like(reference.array), path=Path("<missing>"))
        else:
            prediction = read_label_image(pair.prediction)
            mismatch = grid_mismatch(prediction, reference)
            if mismatch is not None:
                raise ValueError(f"prediction {pair.prediction}: {mismatch} ({pair.reference})")
        counts = class_counts(labelid_confusion(prediction.array, reference.array))
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"case {pair.case!r}: {err}") from err
    iou = class_iou(counts)
    classes = evaluated_classes()
    rows = [
        {
            "case": pair.case,
            "label": label_id,
            "train_id": classes[label_id][0],
            "structure": classes[label_id][1],
            "iou": iou[label_id],
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "missing": pair.prediction is None,
        }
        for label_id, (tp, fp, fn) in counts.items()
    ]
    return rows, {}


def _map_cases(score: Callable[[CasePair], Any], pairs: Sequence[CasePair], workers: int, progress: bool) -> list[Any]:
    """``score`` of every pair, in order, in ``workers`` processes, with a progress bar."""
    results: list[Any] = [None] * len(pairs)
    with tqdm(total=len(pairs), desc="cases", unit="case", disable=not progress, file=sys.stderr) as bar:
        if workers <= 1:
            for index, pair in enumerate(pairs):
                results[index] = score(pair)
                bar.update()
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            try:
                futures = {pool.submit(score, pair): index for index, pair in enumerate(pairs)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            finally:
                pool.shutdown(cancel_futures=True)
    return results


def _unscored_structures(table: pd.DataFrame, columns: Sequence[str], keep_values: bool) -> dict[str, str]:
    """Structures no reference contains: their metrics become NaN (not scored); returns why, per structure.

    ``keep_values`` (the ``monai`` convention): their per-case values stay as MONAI computes them; only the notes.
    """
    notes = {}
    for name, group in table.groupby("structure", sort=False):
        if not group.empty_mask.isin(["reference", "both"]).all():
            continue
        predicted = group[group.empty_mask == "reference"]
        if len(predicted):
            size = "volume_pred_ml" if "volume_pred_ml" in group else "area_pred_mm2"
            unit = "mL" if size == "volume_pred_ml" else "mm²"
            notes[str(name)] = (
                f"absent from every reference; predicted in {_show(predicted.case)} (false positives, "
                f"{predicted[size].sum():.4g} {unit} in all)"
            )
        else:
            notes[str(name)] = "absent from every reference and every prediction"
        if keep_values:
            notes[str(name)] += "; its values are kept as the convention computes them"
        else:
            table.loc[group.index, list(columns)] = np.nan
    return notes


def evaluate_pairs(
    pairs: Sequence[CasePair],
    labels: LabelSpace | Mapping[int, str],
    convention: str = "clinical",
    nsd_tolerance: float = 1.0,
    surface: str = "voxels",
    workers: int = 1,
    ref_space: RefSpace = "auto",
    resample_pred: bool = False,
    progress: bool = True,
    distance_metric: str = "euclidean",
) -> Evaluation:
    """Score every case of ``pairs`` and summarise: the code behind ``medseg evaluate`` and the demo's scores.

    Args:
        pairs: the cases (:func:`pair_cases`, or built by a caller that knows its files).
        labels: the label space (:mod:`~medseg.metrics.labels`), or label value → structure name.
        convention: ``clinical``, ``transunet``, ``nnunet`` or ``monai`` (:mod:`~medseg.metrics.conventions`).
        nsd_tolerance: NSD tolerance in mm (``clinical``, ``monai``; in voxels with a chessboard or taxicab
            ``distance_metric``).
        surface: ``voxels`` or ``surfels`` (``clinical`` only; see :mod:`~medseg.metrics.surface`).
        workers: processes scoring cases in parallel.
        ref_space: with a bundle's label mapping, whether references are ``raw``, in the ``bundle``'s labels,
            or ``auto`` (decided from their values).
        resample_pred: resample a prediction whose grid differs from its reference's (nearest neighbour; logged)
            instead of refusing it.
        progress: show a progress bar over cases (stderr).
        distance_metric: ``euclidean`` (mm), ``chessboard`` or ``taxicab`` (voxel steps, as MONAI's
            ``distance_metric``); ``clinical`` and ``monai`` only.

    Raises:
        ValueError: a case cannot be scored correctly (module doc); the message names the case, the file and the fix.
    """
    space = labels if isinstance(labels, LabelSpace) else LabelSpace(dict(labels))
    scoring = get_convention(convention, surface, distance_metric)  # type: ignore[arg-type]
    if not (math.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
        raise ValueError(f"NSD tolerance must be finite and >= 0 {scoring.distance_unit}, got {nsd_tolerance}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not pairs:
        raise ValueError("no cases to score")
    mode = _reference_mode(pairs, space, ref_space)
    score = partial(
        _score_volume_case,
        space=space,
        mode=mode,
        convention=scoring,
        nsd_tolerance=nsd_tolerance,
        resample=resample_pred,
    )
    results = _map_cases(score, pairs, workers, progress)
    resampled = {}
    for pair, (_, info) in zip(pairs, results, strict=True):
        if info["resampled"] is not None:
            logger.warning("case %s: prediction %s resampled onto the reference grid", pair.case, pair.prediction)
            resampled[pair.case] = f"prediction {info['resampled']}"
    table = pd.DataFrame([row for rows, _ in results for row in rows])
    not_scored = _unscored_structures(table, scoring.columns, keep_values=scoring.score_absent)
    ndim_columns = [c for c in size_columns(3) + size_columns(2) if c in table.columns]
    per_structure, overall = summarize(table, list(scoring.columns) + ndim_columns)
    summary: dict[str, Any] = {
        "convention": scoring.describe(nsd_tolerance),
        "label_space": space.describe(),
        "n_cases": len(pairs),
        "cases": [pair.case for pair in pairs],
        "missing": [pair.case for pair in pairs if pair.prediction is None],
        "per_structure": per_structure,
        "overall": overall,
        "not_scored": not_scored,
        "resampled": resampled,
    }
    if mode["mode"] != "none":
        fit_both = [str(p.reference) for p, (_, info) in zip(pairs, results, strict=True) if info["fit"] == "ambiguous"]
        summary["reference_space"] = {**mode, "fit_both": fit_both}
    return Evaluation(table=table, summary=summary, metric_columns=list(scoring.columns))


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: LabelSpace | Mapping[int, str] | None = None,
    convention: str = "clinical",
    nsd_tolerance: float = 1.0,
    surface: str = "voxels",
    workers: int = 1,
    allow_missing: bool = False,
    pred_glob: str | None = None,
    ref_glob: str | None = None,
    progress: bool = True,
    ignore_labels: Iterable[int] = (),
    ref_space: RefSpace = "auto",
    resample_pred: bool = False,
    only_predicted: bool = False,
    distance_metric: str = "euclidean",
) -> Evaluation:
    """Pair the files of two folders by case id (:func:`pair_cases`) and score them (:func:`evaluate_pairs`).

    Args:
        pred_dir: folder of predicted label maps (searched recursively).
        ref_dir: folder of reference label maps.
        labels: the label space or label value → structure name (:func:`read_label_map`); not in ``cityscapes``.
        convention: ``clinical``, ``transunet``, ``nnunet``, ``monai`` or ``cityscapes`` (labelId PNGs, official
            class IoU).
        allow_missing: score a reference without prediction as an empty prediction instead of raising.
        pred_glob: file-name glob of predictions; the part after the last ``*`` is cut off before the case id.
        ref_glob: the same for references.
        ignore_labels: values left out of the scoring (:mod:`~medseg.metrics.labels`).
        only_predicted: score only the references that have a prediction (the others are listed in the summary).
        nsd_tolerance, surface, workers, ref_space, resample_pred, progress, distance_metric: as
            :func:`evaluate_pairs`.
    """
    ignore = frozenset(int(v) for v in ignore_labels)
    cityscapes = convention == "cityscapes"
    if cityscapes:
        if labels is not None:
            raise ValueError("cityscapes mode scores the 19 official classes; do not pass labels")
        if surface != "voxels" or distance_metric != "euclidean":
            raise ValueError("surface and distance metric do not apply to cityscapes mode (class IoU only)")
        if ignore or ref_space != "auto" or resample_pred:
            raise ValueError("ignore labels, ref space and resampling do not apply to cityscapes mode")
        pred_glob = pred_glob or CITYSCAPES_GLOBS[0]
        ref_glob = ref_glob or CITYSCAPES_GLOBS[1]
    elif labels is None:
        raise ValueError("labels are needed: pass a label map (label value -> name)")
    elif isinstance(labels, LabelSpace):
        labels = dataclasses.replace(labels, ignore=labels.ignore | ignore)
    else:
        labels = LabelSpace(dict(labels), ignore)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pairs, left_out = pair_cases(pred_dir, ref_dir, pred_glob, ref_glob, allow_missing, only_predicted)
    if cityscapes:
        evaluation = _cityscapes_evaluation(pairs, workers, progress)
    else:
        evaluation = evaluate_pairs(
            pairs,
            labels,
            convention,
            nsd_tolerance,
            surface,
            workers,
            ref_space,
            resample_pred,
            progress,
            distance_metric,
        )
    evaluation.summary["unpredicted_references"] = left_out
    return evaluation


def _cityscapes_evaluation(pairs: Sequence[CasePair], workers: int, progress: bool) -> Evaluation:
    from .cityscapes import class_iou, mean_iou

    results = _map_cases(_score_cityscapes_case, pairs, workers, progress)
    table = pd.DataFrame([row for rows, _ in results for row in rows])
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
    summary = {
        "convention": convention,
        "n_cases": len(pairs),
        "cases": [pair.case for pair in pairs],
        "missing": [pair.case for pair in pairs if pair.prediction is None],
        "per_structure": per_structure,
        "overall": {"miou": mean_iou(iou)},
    }
    return Evaluation(table=table, summary=summary, metric_columns=["iou"])


def compare_to_baseline(
    evaluation: Evaluation, baseline_csv: str | Path, seed: int = 0, allow_unmatched: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """Paired comparison (:func:`~medseg.metrics.stats.paired_comparison`) with an earlier ``metrics.csv``.

    Cases are matched by case id (:func:`~medseg.metrics.cases.case_id`: ``img0007`` matches ``0007``). Cases or
    structures in only one of the two tables are refused unless ``allow_unmatched``; then the common ones are
    compared and the others returned, in words, for the report.
    """
    baseline = pd.read_csv(baseline_csv, dtype={"case": str})
    method = evaluation.table.copy()
    for name, table in (("this run", method), (str(baseline_csv), baseline)):
        absent = sorted({"case", "structure", *evaluation.metric_columns} - set(table.columns))
        if absent:
            raise ValueError(f"{name} has no columns {absent}; compare metrics.csv files of one convention")
        table["case"] = table["case"].astype(str).map(case_id)
        twice = table[table.duplicated(["case", "structure"])]
        if len(twice):
            raise ValueError(f"{name} lists case {twice.case.iloc[0]!r} twice (case ids: docs/evaluation.md)")
        values = table[evaluation.metric_columns].apply(pd.to_numeric, errors="coerce")
        infinite = values.columns[np.isinf(values.to_numpy(dtype=float)).any(axis=0)].tolist()
        if infinite:
            raise ValueError(
                f"{name} holds infinite values in {infinite} (the monai convention's distance when one mask is "
                "empty); a mean difference or a rank test with inf is undefined: compare evaluations under the "
                "clinical convention (worst-case distance = image diagonal)"
            )
    unmatched = []
    for column, what in (("case", "cases"), ("structure", "structures")):
        ours, theirs = set(method[column]), set(baseline[column])
        if ours - theirs:
            unmatched.append(f"{what} only in this run: {_show(sorted(ours - theirs))}")
        if theirs - ours:
            unmatched.append(f"{what} only in the baseline: {_show(sorted(theirs - ours))}")
    if unmatched and not allow_unmatched:
        raise ValueError(
            f"this run and the baseline {baseline_csv} do not cover the same cases and structures ("
            + "; ".join(unmatched)
            + "); a paired comparison needs the same ones: score both on one case set, or pass --allow-unmatched to "
            "compare the common ones only"
        )
    cases = set(method.case) & set(baseline.case)
    structures = set(method.structure) & set(baseline.structure)
    if not cases or not structures:
        raise ValueError(f"this run and the baseline {baseline_csv} share no case and structure")
    keep = [t[t.case.isin(cases) & t.structure.isin(structures)] for t in (method, baseline)]
    return paired_comparison(keep[0], keep[1], evaluation.metric_columns, seed=seed), unmatched


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
        "--labels",
        help="label map JSON (flat, bundle metadata, dataset.json), or a bundle folder or name (its label_mapping "
        "maps raw references, e.g. synapse_unet3d: BTCV 0..13 -> Synapse 0..8)",
    )
    names.add_argument("--num-classes", type=int, help="score labels 1..N-1, named label_1 ...")
    parser.add_argument(
        "--ignore-labels", type=int, nargs="+", default=[], metavar="V", help="void values left out of the scoring"
    )
    parser.add_argument(
        "--ref-space",
        default="auto",
        choices=["auto", "raw", "bundle"],
        help="with a bundle's label_mapping: references are raw (mapped) or in the bundle's labels (default: "
        "decided from their values)",
    )
    parser.add_argument(
        "--convention",
        default="clinical",
        choices=[*CONVENTIONS, "cityscapes"],
        help="scoring convention (default clinical; see docs/evaluation.md)",
    )
    parser.add_argument(
        "--nsd-tolerance",
        type=float,
        default=1.0,
        help="NSD tolerance in mm (default 1; in voxels with a chessboard or taxicab --distance-metric)",
    )
    parser.add_argument("--surface", default="voxels", choices=["voxels", "surfels"], help="surface representation")
    parser.add_argument(
        "--distance-metric",
        default="euclidean",
        choices=list(SURFACE_DISTANCE_METRICS),
        help="surface distance (MONAI's distance_metric): euclidean in mm (default), chessboard or taxicab in voxels",
    )
    parser.add_argument("--pred-glob", help="prediction file glob; text after the last * is cut before the case id")
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
    cases = parser.add_mutually_exclusive_group()
    cases.add_argument("--allow-missing", action="store_true", help="score missing predictions as empty")
    cases.add_argument("--only-predicted", action="store_true", help="score only the references that have a prediction")
    parser.add_argument(
        "--resample-pred",
        action="store_true",
        help="resample a prediction on another grid onto its reference's (nearest neighbour, logged per case)",
    )
    parser.add_argument("--compare-to", type=Path, help="a baseline metrics.csv: paired Wilcoxon test and bootstrap CI")
    parser.add_argument(
        "--allow-unmatched", action="store_true", help="with --compare-to: compare the common cases only"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (with --compare-to)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.convention == "cityscapes" and args.labels is None and args.num_classes is None:
        labels = None
    else:
        labels = label_space(args.labels, args.num_classes, args.ignore_labels)
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
        ignore_labels=args.ignore_labels if labels is None else (),
        ref_space=args.ref_space,
        resample_pred=args.resample_pred,
        only_predicted=args.only_predicted,
        distance_metric=args.distance_metric,
    )
    comparison = None
    if args.compare_to is not None:
        comparison, unmatched = compare_to_baseline(evaluation, args.compare_to, args.seed, args.allow_unmatched)
    output = args.output if args.output is not None else args.pred / "evaluation"
    written = evaluation.write(output, args.formats)
    if comparison is not None:
        atomic_write_text(output / "comparison.csv", comparison.to_csv(index=False))
        left_out = "".join(f"- Left out, {item}.\n" for item in unmatched)
        atomic_write_text(
            output / "comparison.md",
            f"# Paired comparison against {args.compare_to}\n\nmean difference = method − baseline; 95% percentile "
            f"bootstrap CI (10000 resamples, seed {args.seed}); two-sided Wilcoxon signed-rank p (unadjusted); "
            "below 5 pairs the caveat column says why neither can be trusted; – : no value (a CI of one pair).\n\n"
            + (f"{left_out}\n" if left_out else "")
            + to_markdown(comparison, floatfmt=".4g", index=False)
            + "\n",
        )
        written += [output / "comparison.csv", output / "comparison.md"]
        for item in unmatched:
            print(f"note: compared on the common cases only; left out: {item}", file=sys.stderr)
    print(evaluation.summary_table().to_markdown())
    for note in evaluation.notes():
        print(f"note: {note}", file=sys.stderr)
    print("written: " + ", ".join(str(p) for p in written))


def run(args: argparse.Namespace) -> int:
    """Evaluate as ``args`` (from :func:`build_parser`) says, write the outputs, print the summary table.

    Returns the exit status: 0, or 2 after printing the message of a refused input (docs/evaluation.md, "Bad
    input") to stderr. ``medseg evaluate`` calls it with its own parsed arguments
    (``sub.add_parser("evaluate", parents=[build_parser()], add_help=False)``).
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
