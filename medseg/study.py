"""The loss-comparison study: a grid of bundle trainings, their metrics in one table, the survey's tables and plots.

The grid is {bundle} × {loss} × {hyperparameter setting} × {seed} (Azad et al., "Loss Functions in the Era of
Semantic Segmentation: A Survey and Outlook", 2023, Section 5). Each run trains a MONAI bundle with a loss
overlay (:func:`medseg.bundles.train`), predicts the test cases (:func:`medseg.bundles.infer`) and scores them
per case and structure (:mod:`medseg.metrics`), all in its own folder::

    <out>/runs/<bundle>/<loss>/<setting>/seed<k>/
        models/ eval/ predictions/    the bundle's checkpoints, TensorBoard events, test predictions
        curves.csv                    train loss per iteration, validation Dice/HD95 per epoch (from TensorBoard)
        test_metrics.csv              one row per test case and structure
        done.json                     written last: the run finished (its spec and summary metrics)

A folder without ``done.json`` was interrupted: it is deleted and the run redone from scratch (the bundle's own
resume is switched off), so every finished run comes from one uninterrupted training. ``<out>/tables`` receives
the survey's tables (CSV and markdown), ``<out>/plots`` the figures (PNG). ``python scripts/compare_losses.py
--help`` (or ``medseg compare``) is the command line; docs/study.md describes the presets.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg.bundles import CPU_UNET3D

__all__ = [
    "ADAPTERS",
    "PRESETS",
    "BundleAdapter",
    "Grid",
    "RunSpec",
    "collect",
    "main",
    "plot_all",
    "run_grid",
    "survey_tables",
    "write_tables",
]

#: The losses of the survey's hyperparameter study (its Table 5).
HYPERPARAMETER_LOSSES = ("focal", "tversky", "focal_tversky")
#: Config ids the inference config shares with the training config (the network and the preprocessing).
_INFERENCE_IDS = ("roi_size", "pixdim", "hu_window", "num_classes")


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid: a bundle trained with a loss overlay, a hyperparameter setting and a seed."""

    bundle: str
    loss: str
    setting: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def setting_name(self) -> str:
        """``default`` for the overlay's own values, else ``gamma=1.0,alpha=0.5`` (the last part of each id)."""
        if not self.setting:
            return "default"
        return ",".join(f"{key.split('#')[-1]}={_compact(value)}" for key, value in self.setting)

    def folder(self, out: Path) -> Path:
        """``<out>/runs/<bundle>/<loss>/<setting>/seed<k>``."""
        return (
            out / "runs" / self.bundle / self.loss / re.sub(r"[^\w.,=-]", "_", self.setting_name) / f"seed{self.seed}"
        )

    def describe(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "loss": self.loss, "setting": self.setting_name, "seed": self.seed}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


@dataclass
class Grid:
    """The study's grid and how each bundle is run.

    Args:
        bundles: bundle names (keys of :data:`ADAPTERS`).
        losses: loss overlay names (``configs/losses/<loss>.json``).
        seeds: training seeds (the bundle's ``seed``: weights, sampling and augmentation).
        settings: loss → hyperparameter settings, each a dict of MONAI config ids → values, e.g.
            ``{"loss_kwargs#focal#gamma": 1.0}``; ``{}`` is the overlay's own values. A loss not listed runs
            once with ``{}``. Its first setting is its main one (Table 3, the plots).
        overrides: bundle → config overrides applied to every run of it (epochs, patch size, network width).
        datasets: bundle → dataset folder; a bundle not listed gets synthetic data under ``<out>/data``.
        synthetic: keyword arguments of the adapter's synthetic-data writer (cases, size, seed).
    """

    bundles: Sequence[str]
    losses: Sequence[str]
    seeds: Sequence[int] = (0,)
    settings: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    datasets: Mapping[str, str | Path] = field(default_factory=dict)
    synthetic: Mapping[str, Any] = field(default_factory=dict)

    def runs(self) -> list[RunSpec]:
        unknown = sorted(set(self.bundles) - set(ADAPTERS))
        if unknown:
            raise ValueError(f"no study adapter for bundle(s) {unknown}; known: {sorted(ADAPTERS)}")
        stray = sorted(set(self.settings) - set(self.losses))
        if stray:
            raise ValueError(
                f"settings given for loss(es) {stray} that are not in the grid's losses {list(self.losses)}"
            )
        if not self.losses or not self.seeds:
            raise ValueError(
                f"the grid needs at least one loss and one seed, got {list(self.losses)}, {list(self.seeds)}"
            )
        for loss, settings in self.settings.items():
            names = [RunSpec("", loss, tuple(sorted(s.items())), 0).setting_name for s in settings]
            if len(set(names)) < len(names):
                raise ValueError(f"loss {loss} has the same setting twice: {names}")
        return [
            RunSpec(bundle, loss, tuple(sorted(setting.items())), int(seed))
            for bundle in self.bundles
            for loss in self.losses
            for setting in (self.settings.get(loss) or [{}])
            for seed in self.seeds
        ]

    def main_setting(self, loss: str) -> str:
        """The setting name of ``loss``'s first setting (the one Table 3 and the plots show)."""
        first = (self.settings.get(loss) or [{}])[0]
        return RunSpec("", loss, tuple(sorted(first.items())), 0).setting_name


# --- bundles: how to get data for them and how to score their predictions -------------------------------------


@dataclass(frozen=True)
class BundleAdapter:
    """What the study needs to know about a bundle.

    Args:
        network: the network's name in the tables.
        dataset: ``synapse`` (Table 3) or ``cityscapes`` (Table 4).
        make_synthetic: writes synthetic data in the bundle's layout into a folder, returns the dataset folder.
        score: (run folder, dataset folder, inference overrides) → one row per test case and structure with
            ``case``, ``structure``, ``dice``, ``hd95`` in mm (Synapse) or ``iou`` (Cityscapes).
        overlay: (run folder, dataset folder, case) → image, reference and prediction slices (2D) for the figures.
    """

    network: str
    dataset: str
    make_synthetic: Callable[..., Path]
    score: Callable[[Path, Path, Mapping[str, Any]], pd.DataFrame]
    overlay: Callable[[Path, Path, str], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _make_synthetic_btcv(root: Path, cases: int = 6, size: int = 48, seed: int = 0) -> Path:
    from medseg.data.synthetic import make_synapse

    return make_synapse(root, layout="btcv", cases=cases, size=size, seed=seed, datalist=True)


def _btcv_test_cases(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    """Test case name (the image file name without ``.nii.gz``) → its datalist entry."""
    from medseg.data import btcv_datalist

    return {Path(d["image"]).name.split(".")[0]: d for d in btcv_datalist(dataset_dir, "test")}


def _btcv_pair(run_dir: Path, entry: Mapping[str, Any], image_name: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """Prediction and Synapse-mapped reference label maps of one test case, and the reference NIfTI."""
    import nibabel as nib

    from medseg.bundles import synapse_reference

    pred_path = run_dir / "predictions" / f"{image_name}_seg.nii.gz"
    if not pred_path.is_file():
        raise FileNotFoundError(f"no prediction {pred_path} for test case {entry['image']}")
    ref, ref_img = synapse_reference(entry["label"])
    return np.asarray(nib.load(pred_path).dataobj).astype(np.int64), ref, ref_img


def _infer_btcv(run_dir: Path, dataset_dir: Path, overrides: Mapping[str, Any]) -> None:
    from medseg.bundles import infer

    network = {k: v for k, v in overrides.items() if k.startswith("network_def") or k in _INFERENCE_IDS}
    infer(
        "synapse_unet3d",
        run_dir,
        dataset_dir=str(dataset_dir),
        output_dir=str(run_dir / "predictions"),
        **{"dataloader#num_workers": 0},
        **network,
    )


def _score_btcv(run_dir: Path, dataset_dir: Path, overrides: Mapping[str, Any]) -> pd.DataFrame:
    """Predict the test cases with ``models/model.pt`` and score them in mm (``clinical`` convention)."""
    from medseg.bundles import score_btcv_predictions

    _infer_btcv(run_dir, dataset_dir, overrides)
    table = score_btcv_predictions(run_dir / "predictions", dataset_dir)
    return table[["case", "structure", "dice", "hd95_mm"]].rename(columns={"hd95_mm": "hd95"})


def _overlay_btcv(run_dir: Path, dataset_dir: Path, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The axial slice of ``case`` with the most reference organ voxels: CT, reference, prediction."""
    import nibabel as nib

    entry = _btcv_test_cases(dataset_dir)[case]
    pred, ref, _ = _btcv_pair(run_dir, entry, case)
    image = np.asarray(nib.load(entry["image"]).dataobj, dtype=np.float32)
    z = int(np.argmax((ref > 0).sum(axis=(0, 1))))
    return image[..., z].T, ref[..., z].T, pred[..., z].T


#: CPU size of cityscapes_2d for the study: 128 × 64 frames resized to 64 × 128, 64² crops and windows, a 3-level
#: UNet of 8–32 channels, 20 epochs (minutes on 2 CPU cores; the bundle's own: 512 × 1024, 300 epochs).
CPU_CITYSCAPES = {
    "max_epochs": 20,
    "val_interval": 10,
    "num_workers": 0,
    "batch_size": 4,
    "image_size": [64, 128],
    "roi_size": [64, 64],
    "amp": False,
    "network_def#channels": [8, 16, 32],
    "network_def#strides": [2, 2],
    "network_def#num_res_units": 0,
}
#: Config ids of cityscapes_2d's inference config that must match the training (network and preprocessing).
_CITYSCAPES_INFERENCE_IDS = ("image_size", "roi_size", "num_classes", "amp")


def _make_synthetic_cityscapes(root: Path, cases: int = 12, size: int = 128, seed: int = 0) -> Path:
    from medseg.data.synthetic import make_cityscapes

    return make_cityscapes(root, cases=cases, size=size, seed=seed)


def _cityscapes_val_cases(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    """Val image name (``<city>_<seq>_<frame>``) → its datalist entry: the labelled split the study scores."""
    from medseg.data import cityscapes_datalist

    return {d["name"]: d for d in cityscapes_datalist(dataset_dir, "val")}


def _cityscapes_pair(run_dir: Path, entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and reference labelIds of one val image (a ``labelTrainIds`` reference mapped back to labelIds,
    its ignored 255 to ``unlabeled``, 0, which the evaluation leaves out too)."""
    from PIL import Image

    from medseg.data.cityscapes import TRAIN_ID_TO_LABEL_ID

    pred_path = run_dir / "predictions" / f"{entry['name']}_labelIds.png"
    if not pred_path.is_file():
        raise FileNotFoundError(f"no prediction {pred_path} for val image {entry['image']}")
    ref = np.asarray(Image.open(entry["label"])).astype(np.int64)
    if entry["label"].endswith("_labelTrainIds.png"):
        to_label_ids = np.zeros(256, dtype=np.int64)
        for train_id, label_id in TRAIN_ID_TO_LABEL_ID.items():
            to_label_ids[train_id] = label_id
        ref = to_label_ids[ref]
    return np.asarray(Image.open(pred_path)).astype(np.int64), ref


def _score_cityscapes(run_dir: Path, dataset_dir: Path, overrides: Mapping[str, Any]) -> pd.DataFrame:
    """Predict the val images with ``models/model.pt`` (labelIds PNGs at full size) and score them as the official
    script does: one labelId confusion matrix over all images, IoU per evaluated class (a class absent from every
    reference and prediction has no row), so the mean of the rows is the official mIoU."""
    from medseg.bundles import infer
    from medseg.metrics.cityscapes import class_counts, class_iou, evaluated_classes, labelid_confusion

    network = {k: v for k, v in overrides.items() if k.startswith("network_def") or k in _CITYSCAPES_INFERENCE_IDS}
    infer(
        "cityscapes_2d",
        run_dir,
        dataset_dir=str(dataset_dir),
        output_dir=str(run_dir / "predictions"),
        num_workers=0,
        **network,
    )
    names = {label_id: name for label_id, (_, name) in evaluated_classes().items()}
    # the official mIoU: one confusion matrix summed over all val images, then IoU per class
    confusion = sum(
        labelid_confusion(*_cityscapes_pair(run_dir, e)) for e in _cityscapes_val_cases(dataset_dir).values()
    )
    iou = class_iou(class_counts(confusion))
    rows = [{"case": "val", "structure": names[k], "iou": v} for k, v in iou.items() if not np.isnan(v)]
    return pd.DataFrame(rows, columns=["case", "structure", "iou"])


def _overlay_cityscapes(run_dir: Path, dataset_dir: Path, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Val image ``case`` (else the first): RGB frame, reference and prediction trainIds (rows flipped for
    ``origin="lower"``)."""
    from PIL import Image

    from medseg.data import labelids_to_trainids

    cases = _cityscapes_val_cases(dataset_dir)
    entry = cases.get(case) or next(iter(cases.values()))  # scores are dataset-level ("val"): show the first image
    pred, ref = _cityscapes_pair(run_dir, entry)
    image = np.asarray(Image.open(entry["image"]).convert("RGB"))
    ref_train, pred_train = (labelids_to_trainids(a, str(entry["label"])) for a in (ref, pred))
    return image[::-1], ref_train[::-1], pred_train[::-1]


#: Bundle name → how the study runs it. synapse_transunet is to be added once its inference config is settled.
ADAPTERS: dict[str, BundleAdapter] = {
    "synapse_unet3d": BundleAdapter("UNet 3D", "synapse", _make_synthetic_btcv, _score_btcv, _overlay_btcv),
    "cityscapes_2d": BundleAdapter(
        "UNet 2D", "cityscapes", _make_synthetic_cityscapes, _score_cityscapes, _overlay_cityscapes
    ),
}


# --- running ----------------------------------------------------------------------------------------------------


def run_status(folder: Path) -> str:
    """``done`` (has ``done.json``), ``interrupted`` (exists without it) or ``todo``."""
    if (folder / "done.json").is_file():
        return "done"
    return "interrupted" if folder.exists() else "todo"


def read_curves(event_dir: Path) -> pd.DataFrame:
    """Scalars of the TensorBoard events in ``event_dir`` as rows ``tag, step, value``.

    ``train_loss`` is logged per iteration, ``val_mean_dice`` and ``val_hd95`` (voxels of the resampled grid,
    MONAI's handler) per validation epoch.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    events.Reload()
    rows = [
        {"tag": tag, "step": e.step, "value": e.value} for tag in events.Tags()["scalars"] for e in events.Scalars(tag)
    ]
    return pd.DataFrame(rows, columns=["tag", "step", "value"])


def run_one(spec: RunSpec, folder: Path, dataset_dir: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Train, predict, score ``spec`` from scratch in ``folder``; write ``done.json`` last and return it."""
    from medseg.bundles import train

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    train(
        spec.bundle,
        spec.loss,
        folder,
        dataset_dir=str(dataset_dir),
        resume=False,
        seed=spec.seed,
        **{**overrides, **dict(spec.setting)},
    )
    curves = read_curves(folder / "eval")
    curves.to_csv(folder / "curves.csv", index=False)
    scores = ADAPTERS[spec.bundle].score(folder, dataset_dir, overrides)
    scores.to_csv(folder / "test_metrics.csv", index=False)
    validation = curves[curves.tag.isin(["val_mean_dice", "val_hd95"])].sort_values("step")
    last_val = validation.groupby("tag").value.last().to_dict()
    summary = {
        **spec.describe(),
        "setting_overrides": dict(spec.setting),
        "overrides": dict(overrides),
        "seconds": round(time.perf_counter() - start, 2),
        "val_mean_dice": last_val.get("val_mean_dice"),
        "val_hd95_voxels": last_val.get("val_hd95"),
        "test": {k: float(scores[k].mean()) for k in ("dice", "hd95", "iou") if k in scores},
    }
    partial = folder / "done.json.partial"
    partial.write_text(json.dumps(summary, indent=2, default=str))
    partial.rename(folder / "done.json")  # atomic: a crash leaves no half-written done.json
    return summary


def dataset_for(grid: Grid, bundle: str, out: Path) -> Path:
    """The bundle's dataset folder: the one given, or synthetic data written once under ``<out>/data/<bundle>``."""
    if bundle in grid.datasets:
        return Path(grid.datasets[bundle])
    root = out / "data" / bundle
    marker = root / ".complete"
    if not marker.is_file():
        ADAPTERS[bundle].make_synthetic(root, **grid.synthetic)
        marker.touch()
    return root


def run_grid(grid: Grid, out: str | Path, dry_run: bool = False, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run every run of ``grid`` not finished yet; returns the plan (one row per run with ``status``, ``action``).

    ``action`` is ``skip`` (finished before), ``run`` (new) or ``redo`` (interrupted: deleted and rerun).
    With ``dry_run`` nothing is written or trained.
    """
    out = Path(out)
    rows = []
    for spec in grid.runs():
        folder = spec.folder(out)
        status = run_status(folder)
        action = {"done": "skip", "interrupted": "redo", "todo": "run"}[status]
        rows.append({**spec.describe(), "status": status, "action": action, "folder": str(folder)})
    plan = pd.DataFrame(rows)
    if dry_run:
        return plan
    for index, spec in enumerate(grid.runs()):
        if plan.at[index, "action"] == "skip":
            continue
        log(f"[{index + 1}/{len(plan)}] {plan.at[index, 'action']}: {spec.folder(out)}")
        dataset = dataset_for(grid, spec.bundle, out)
        run_one(spec, spec.folder(out), dataset, grid.overrides.get(spec.bundle, {}))
    return plan


# --- collecting and tables --------------------------------------------------------------------------------------


def collect(out: str | Path) -> pd.DataFrame:
    """Every finished run under ``<out>/runs`` in one table.

    One row per run, split and structure: ``split`` is ``test`` (one row per case and structure, ``dice`` and
    ``hd95`` in mm from the inference) or ``validation`` (``case``/``structure`` ``mean``: the last validation
    epoch's mean Dice over cases and organs, ``hd95`` in voxels of the resampled grid: MONAI's handler).
    Columns: ``bundle, network, dataset, loss, setting, seed, split, case, structure, dice, hd95`` (+ ``iou``).
    """
    frames = []
    for done in sorted(Path(out).glob("runs/*/*/*/seed*/done.json")):
        summary = json.loads(done.read_text())
        adapter = ADAPTERS[summary["bundle"]]
        keys = {k: summary[k] for k in ("bundle", "loss", "setting", "seed")}
        keys |= {"network": adapter.network, "dataset": adapter.dataset}
        test = pd.read_csv(done.parent / "test_metrics.csv").assign(split="test", **keys)
        validation = pd.DataFrame([{"split": "validation", "case": "mean", "structure": "mean", **keys}])
        validation = validation.assign(dice=summary["val_mean_dice"], hd95=summary["val_hd95_voxels"])
        frames += [test, validation]
    columns = ["bundle", "network", "dataset", "loss", "setting", "seed", "split", "case", "structure", "dice", "hd95"]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True)
    return table[columns + [c for c in table.columns if c not in columns]]


def _per_run_case(test: pd.DataFrame) -> pd.DataFrame:
    """Mean over structures of each case of each run (the per-case Dice the box plot shows)."""
    keys = ["network", "loss", "setting", "seed", "case"]
    return test.groupby(keys, sort=False)[["dice", "hd95"]].mean().reset_index()


def survey_tables(metrics: pd.DataFrame, main_settings: Mapping[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """The survey's tables from :func:`collect`'s table (test split; Dice in %, HD95 in mm).

    - ``table3_synapse``: per network and loss (its main setting), mean DSC and HD95 and per-organ DSC and HD95;
      means over cases and seeds of the case's value (organs averaged within a case first for the means).
    - ``table4_cityscapes``: per network and loss, mIoU (%) — only when Cityscapes runs with ``iou`` exist.
    - ``table5_hyperparameters``: per network, loss (focal, Tversky, focal Tversky) and setting: DSC and HD95
      mean ± standard deviation over seeds.

    ``main_settings`` maps a loss to the setting name Table 3 uses (default: ``default``).
    """
    test = metrics[metrics.split == "test"]
    main_settings = main_settings or {}
    tables: dict[str, pd.DataFrame] = {}
    synapse = test[test.dataset == "synapse"]
    main = synapse[synapse.setting == synapse.loss.map(lambda loss: main_settings.get(loss, "default"))]
    if not main.empty:
        per_case = _per_run_case(main)
        overall = per_case.groupby(["network", "loss"], sort=False)[["dice", "hd95"]].mean()
        overall = overall.rename(columns={"dice": "DSC", "hd95": "HD95"})
        organs = main.groupby(["network", "loss", "structure"], sort=False)[["dice", "hd95"]].mean().unstack()
        order = list(dict.fromkeys(main.structure))
        organ_columns = {f"{s} DSC": organs[("dice", s)] for s in order} | {
            f"{s} HD95": organs[("hd95", s)] for s in order
        }
        table = pd.concat([overall, pd.DataFrame(organ_columns)], axis=1)
        dice_columns = ["DSC"] + [f"{s} DSC" for s in order]
        table[dice_columns] *= 100
        tables["table3_synapse"] = table
    cityscapes = test[test.dataset == "cityscapes"]
    if not cityscapes.empty and "iou" in cityscapes:
        per_run = cityscapes.groupby(["network", "loss", "seed"], sort=False).iou.mean()
        tables["table4_cityscapes"] = (per_run.groupby(["network", "loss"], sort=False).mean() * 100).to_frame("mIoU")
    study = synapse[synapse.loss.isin(HYPERPARAMETER_LOSSES)]
    if not study.empty:
        per_seed = study.groupby(["network", "loss", "setting", "seed"], sort=False)[["dice", "hd95"]].mean()
        per_seed["dice"] *= 100
        grouped = per_seed.groupby(["network", "loss", "setting"], sort=False)
        table = grouped.mean().rename(columns={"dice": "DSC", "hd95": "HD95"})
        spread = grouped.std(ddof=0).rename(columns={"dice": "DSC std", "hd95": "HD95 std"})
        tables["table5_hyperparameters"] = pd.concat([table, spread], axis=1)[["DSC", "DSC std", "HD95", "HD95 std"]]
    return tables


def write_tables(metrics: pd.DataFrame, tables: Mapping[str, pd.DataFrame], folder: str | Path) -> list[Path]:
    """``metrics.csv`` (the whole table) and each survey table as ``<name>.csv`` and ``<name>.md``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(folder / "metrics.csv", index=False)
    written = [folder / "metrics.csv"]
    for name, table in tables.items():
        table.to_csv(folder / f"{name}.csv")
        (folder / f"{name}.md").write_text(table.reset_index().to_markdown(index=False, floatfmt=".2f") + "\n")
        written += [folder / f"{name}.csv", folder / f"{name}.md"]
    return written


# --- plots ------------------------------------------------------------------------------------------------------


def _figure(columns: int, rows: int = 1, size: float = 4.0):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size * columns, size * rows), layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False)


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=80)
    return path


def _main_runs(out: Path, grid: Grid, bundle: str) -> dict[str, list[Path]]:
    """Loss → the finished run folders of its main setting, one per seed."""
    runs: dict[str, list[Path]] = {}
    for spec in grid.runs():
        if spec.bundle == bundle and spec.setting_name == grid.main_setting(spec.loss):
            if run_status(spec.folder(out)) == "done":
                runs.setdefault(spec.loss, []).append(spec.folder(out))
    return runs


def plot_curves(out: Path, grid: Grid, bundle: str, path: Path) -> Path:
    """Training loss per iteration and validation mean Dice per epoch, one line per loss (mean over seeds)."""
    figure, axes = _figure(2)
    for loss, folders in _main_runs(out, grid, bundle).items():
        curves = pd.concat([pd.read_csv(f / "curves.csv") for f in folders])
        for axis, tag in zip(axes[0], ("train_loss", "val_mean_dice"), strict=True):
            line = curves[curves.tag == tag].groupby("step").value.mean()
            axis.plot(line.index, line.to_numpy(), marker="." if tag != "train_loss" else None, label=loss)
    axes[0, 0].set(title=f"{bundle}: training loss", xlabel="iteration", ylabel="loss")
    axes[0, 1].set(title=f"{bundle}: validation", xlabel="epoch", ylabel="mean Dice")
    axes[0, 1].legend(fontsize="small")
    return _save(figure, path)


def plot_overlays(out: Path, grid: Grid, bundle: str, path: Path) -> Path:
    """The first test case's busiest slice: image, reference, and each loss's prediction (first seed)."""
    runs = _main_runs(out, grid, bundle)
    adapter = ADAPTERS[bundle]
    dataset = dataset_for(grid, bundle, out)
    case = pd.read_csv(next(iter(runs.values()))[0] / "test_metrics.csv").case.iloc[0]
    figure, axes = _figure(len(runs) + 1, size=3.0)
    image, reference, _ = adapter.overlay(next(iter(runs.values()))[0], dataset, str(case))
    panels = [("reference", reference)]
    panels += [(loss, adapter.overlay(folders[0], dataset, str(case))[2]) for loss, folders in runs.items()]
    for axis, (title, labels) in zip(axes[0], panels, strict=True):
        axis.imshow(image, cmap="gray", origin="lower")
        axis.imshow(np.ma.masked_equal(labels, 0), cmap="tab10", vmin=0, vmax=9, alpha=0.5, origin="lower")
        axis.set(title=title, xticks=[], yticks=[])
    return _save(figure, path)


def plot_dice_boxes(metrics: pd.DataFrame, main_settings: Mapping[str, str], bundle: str, path: Path) -> Path:
    """Box plot of per-case Dice (organs averaged, all seeds) per loss."""
    test = metrics[(metrics.split == "test") & (metrics.bundle == bundle)]
    test = test[test.setting == test.loss.map(lambda loss: main_settings.get(loss, "default"))]
    per_case = _per_run_case(test)
    losses = list(dict.fromkeys(per_case.loss))
    figure, axes = _figure(1, size=max(4.0, 0.8 * len(losses)))
    axes[0, 0].boxplot([per_case[per_case.loss == loss].dice.to_numpy() for loss in losses], tick_labels=losses)
    axes[0, 0].set(title=f"{bundle}: per-case Dice on the test cases", ylabel="Dice")
    axes[0, 0].tick_params(axis="x", labelrotation=45)
    return _save(figure, path)


def plot_all(out: str | Path, grid: Grid, metrics: pd.DataFrame) -> list[Path]:
    """Curves, overlays and the Dice box plot of every bundle with finished runs, under ``<out>/plots``."""
    out = Path(out)
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    main_settings = {loss: grid.main_setting(loss) for loss in grid.losses}
    written = []
    for bundle in grid.bundles:
        if not _main_runs(out, grid, bundle):
            continue
        written.append(plot_curves(out, grid, bundle, folder / f"curves_{bundle}.png"))
        written.append(plot_overlays(out, grid, bundle, folder / f"overlays_{bundle}.png"))
        written.append(plot_dice_boxes(metrics, main_settings, bundle, folder / f"dice_boxes_{bundle}.png"))
    return written


# --- presets and the command line -------------------------------------------------------------------------------

#: The survey's hyperparameter study (Table 5); medseg's values around each loss's default (the paper reports
#: its Table 5 only as text-level findings, so these are not its exact grid).
SURVEY_SETTINGS: dict[str, list[dict[str, Any]]] = {
    "focal": [{}] + [{"loss_kwargs#focal#gamma": g} for g in (0.5, 1.0, 3.0, 5.0)],
    "tversky": [{}]
    + [{"loss_kwargs#tversky#alpha": a, "loss_kwargs#tversky#beta": round(1 - a, 2)} for a in (0.5, 0.7, 0.9)],
    "focal_tversky": [{}] + [{"loss_kwargs#focal_tversky#gamma": g} for g in (1.0, 2.0, 3.0)],
}


def _survey_grid() -> Grid:
    from medseg.bundles import LOSS_OVERLAYS

    return Grid(
        bundles=["synapse_unet3d"],
        losses=sorted(p.stem for p in LOSS_OVERLAYS.glob("*.json")),
        seeds=(0, 1, 2),
        settings=SURVEY_SETTINGS,
    )


def _tiny_grid() -> Grid:
    return Grid(
        bundles=["synapse_unet3d"],
        losses=["dice_ce", "dice", "focal", "tversky"],
        seeds=(0,),
        settings={"focal": [{}, {"loss_kwargs#focal#gamma": 1.0}]},
        overrides={"synapse_unet3d": CPU_UNET3D, "cityscapes_2d": CPU_CITYSCAPES},  # --bundles picks either
        synthetic={"seed": 0},  # each bundle's writer has CPU-size defaults
    )


#: ``tiny``: minutes on 2 CPU cores on synthetic data. ``survey``: every loss overlay, the Table 5 settings,
#: three seeds, the bundles' own training schedule: a GPU machine and the real datasets (``--data``).
PRESETS: dict[str, Callable[[], Grid]] = {"tiny": _tiny_grid, "survey": _survey_grid}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_assignments(items: Sequence[str], what: str) -> dict[str, Any]:
    parsed = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{what} takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        parsed[key] = _parse_value(value)
    return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_losses", description="Train a grid of bundle × loss × setting × seed and tabulate the results."
    )
    parser.add_argument("--out", default="medseg_study", help="the study folder (runs/, tables/, plots/)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--bundles", nargs="+", help="replace the preset's bundles")
    parser.add_argument("--losses", nargs="+", help="replace the preset's losses")
    parser.add_argument("--seeds", nargs="+", type=int, help="replace the preset's seeds")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="LOSS:ID=VALUE[;ID=VALUE]",
        help="add a hyperparameter setting, e.g. 'focal:loss_kwargs#focal#gamma=1.0' (repeatable)",
    )
    parser.add_argument("--data", nargs="*", default=[], metavar="BUNDLE=DIR", help="dataset folder per bundle")
    parser.add_argument("--override", nargs="*", default=[], metavar="ID=VALUE", help="config ids for every run")
    parser.add_argument("--dry-run", action="store_true", help="list the grid and each run's status; run nothing")
    return parser


def grid_from_args(args: argparse.Namespace) -> Grid:
    grid = PRESETS[args.preset]()
    grid.bundles = args.bundles or grid.bundles
    grid.losses = args.losses or grid.losses
    grid.seeds = args.seeds or grid.seeds
    settings = {loss: list(s) for loss, s in grid.settings.items() if loss in grid.losses}
    for text in args.setting:
        loss, sep, assignments = text.partition(":")
        if not sep:
            raise SystemExit(f"--setting takes LOSS:ID=VALUE[;ID=VALUE], got {text!r}")
        setting = _parse_assignments(assignments.split(";"), "--setting")
        if setting not in settings.setdefault(loss, [{}]):
            settings[loss].append(setting)
    grid.settings = settings
    extra = _parse_assignments(args.override, "--override")
    grid.overrides = {b: {**grid.overrides.get(b, {}), **extra} for b in grid.bundles}
    grid.datasets = {**grid.datasets, **_parse_assignments(args.data, "--data")}
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    """``compare_losses``: run (or ``--dry-run`` list) the grid, then write tables and plots under ``--out``."""
    args = build_parser().parse_args(argv)
    grid = grid_from_args(args)
    out = Path(args.out)
    plan = run_grid(grid, out, dry_run=args.dry_run)
    columns = ["bundle", "loss", "setting", "seed", "status"] + (["folder"] if args.dry_run else ["action"])
    print(plan[columns].to_string(index=False))
    if args.dry_run:
        return 0
    metrics = collect(out)
    main_settings = {loss: grid.main_setting(loss) for loss in grid.losses}
    tables = survey_tables(metrics, main_settings)
    written = write_tables(metrics, tables, out / "tables") + plot_all(out, grid, metrics)
    for name, table in tables.items():
        print(f"\n{name}\n{table.round(2).to_string()}")
    print("\nwritten: " + ", ".join(str(p) for p in written))
    return 0
