"""The loss-comparison study: a grid of bundle trainings, their metrics in one table, the survey's tables and plots.

The grid is {bundle} × {loss} × {hyperparameter setting} × {seed} (Azad et al., "Loss Functions in the Era of
Semantic Segmentation: A Survey and Outlook", 2023, Section 5). The protocol (``with-ce`` or ``alone``) decides
whether a loss is trained as 0.5·CE + 0.5·loss (overlay ``configs/losses/ce+<loss>.json``) or alone
(``<loss>.json``); every folder, table row and legend carries the overlay's name, so it says what was optimised.
Each run trains a MONAI bundle with its overlay (:func:`medseg.bundles.train`), predicts the test cases
(:func:`medseg.bundles.infer`) and scores them per case and structure (:mod:`medseg.metrics`), all in its own
folder::

    <out>/runs/<bundle>/<overlay>/<setting>/seed<k>/
        models/ eval/ predictions/    the bundle's checkpoints, TensorBoard events, test predictions
        curves.csv                    train loss per iteration, validation Dice/HD95 per epoch (from TensorBoard)
        test_metrics.csv              one row per test case and structure
        done.json                     written last: the run finished (its spec, loss weights, summary metrics)

A folder without ``done.json`` was interrupted: it is deleted and the run redone from scratch (the bundle's own
resume is switched off), so every finished run comes from one uninterrupted training; only a cluster job that is
preempted or times out resumes from its checkpoint, which continues the training bit for bit (:mod:`medseg.launch`,
docs/cluster.md: ``--launcher local|submitit``, ``--jobs``, ``--status``, ``--tables-only``). ``<out>/tables`` receives
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

from medseg import user_study
from medseg.bundles import CPU_UNET3D, LOSS_OVERLAYS, bundle_configs, loss_overlay
from medseg.console import UserError
from medseg.launch.resources import add_launch_arguments, launcher_from_args
from medseg.metrics.stats import mean_std_n, to_markdown

__all__ = [
    "ADAPTERS",
    "PRESETS",
    "PROTOCOLS",
    "BundleAdapter",
    "Grid",
    "RunSpec",
    "collect",
    "main",
    "objective",
    "overlay_name",
    "plot_all",
    "run_grid",
    "survey_tables",
    "trained_weights",
    "write_outputs",
    "write_tables",
]

#: The losses of the survey's hyperparameter study (its Table 5), alone or with CE.
HYPERPARAMETER_LOSSES = ("focal", "tversky", "focal_tversky")
#: Config ids the inference config shares with the training config (the network and the preprocessing).
_INFERENCE_IDS = ("roi_size", "pixdim", "hu_window", "num_classes")
#: ``--protocol``: ``with-ce`` trains each loss as 0.5·CE + 0.5·loss (``ce+<loss>.json``; a loss that holds CE
#: already has no such overlay and runs alone), ``alone`` trains ``<loss>.json``. The first is the default.
PROTOCOLS = ("with-ce", "alone")
#: The prefix of the overlays that add 0.5·CE (scripts/make_loss_configs.py writes them).
WITH_CE = "ce+"


def overlay_name(loss: str, protocol: str) -> str:
    """The overlay that trains ``loss`` under ``protocol``.

    ``with-ce``: ``ce+<loss>`` where that overlay exists, else ``<loss>`` (it holds CE already: ``ce``, ``dice_ce``,
    ``combo``, ``exp_log``, ``unified_focal``); ``alone``: ``<loss>``. A name given as ``ce+<loss>`` is kept.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "with-ce" and not loss.startswith(WITH_CE) and (LOSS_OVERLAYS / f"{WITH_CE}{loss}.json").is_file():
        return WITH_CE + loss
    return loss


def base_loss(overlay: str) -> str:
    """The loss an overlay name is about: ``ce+focal`` → ``focal``."""
    return overlay.removeprefix(WITH_CE)


def trained_weights(bundle: str, overlay: str, overrides: Mapping[str, Any]) -> dict[str, float]:
    """The ``loss_weights`` a run of ``bundle`` with ``overlay`` and config ``overrides`` trains with, read by MONAI's
    parser from the same files and overrides :func:`medseg.bundles.train` uses."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle_configs(bundle) / "train.json"), str(loss_overlay(overlay))])
    parser.update(dict(overrides))
    return {str(k): float(v) for k, v in parser.get_parsed_content("loss_weights").items()}


def objective(weights: Mapping[str, float]) -> str:
    """What a run optimised, e.g. ``0.5·ce + 0.5·dice``, or ``dice`` for one loss of weight 1."""
    terms = [(name, weight) for name, weight in weights.items() if weight != 0]
    if len(terms) == 1 and terms[0][1] == 1:
        return terms[0][0]
    return " + ".join(f"{weight:g}·{name}" for name, weight in terms)


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
        losses: loss names (``focal``) or overlay names (``ce+focal``, ``configs/losses/<name>.json``).
        seeds: training seeds (the bundle's ``seed``: weights, sampling and augmentation).
        settings: loss → hyperparameter settings, each a dict of MONAI config ids → values, e.g.
            ``{"loss_kwargs#focal#gamma": 1.0}``; ``{}`` is the overlay's own values. A loss not listed runs
            once with ``{}``. Its first setting is its main one (Table 3, the plots). Keys are loss or overlay names.
        overrides: bundle → config overrides applied to every run of it (epochs, patch size, network width).
        datasets: bundle → dataset folder; a bundle not listed gets synthetic data under ``<out>/data``.
        synthetic: keyword arguments of the adapter's synthetic-data writer (cases, size, seed).
        protocol: ``with-ce`` (each loss as 0.5·CE + 0.5·loss) or ``alone``: :func:`overlay_name`.
    """

    bundles: Sequence[str]
    losses: Sequence[str]
    seeds: Sequence[int] = (0,)
    settings: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    datasets: Mapping[str, str | Path] = field(default_factory=dict)
    synthetic: Mapping[str, Any] = field(default_factory=dict)
    protocol: str = PROTOCOLS[0]

    def overlays(self) -> dict[str, str]:
        """Each loss of the grid → the overlay it trains under the protocol (checked to exist and to be unique)."""
        overlays = {loss: overlay_name(loss, self.protocol) for loss in self.losses}
        for name in dict.fromkeys(overlays.values()):
            loss_overlay(name)  # a clear error naming the available overlays
            twins = [loss for loss, overlay in overlays.items() if overlay == name]
            if len(twins) > 1:
                raise ValueError(f"losses {twins} all train {name} under --protocol {self.protocol}: list it once")
        return overlays

    def settings_of(self, loss: str) -> list[Mapping[str, Any]]:
        """The settings of ``loss`` (a loss or an overlay name of the grid); ``[{}]`` when none are given."""
        names = {loss} | {given for given, overlay in self.overlays().items() if overlay == loss}
        names |= {overlay_name(loss, self.protocol)}
        found = [name for name in sorted(names) if self.settings.get(name)]
        if len(found) > 1:
            raise ValueError(f"settings given under both {found}, which name one run: give them once")
        return list(self.settings[found[0]]) if found else [{}]

    def runs(self) -> list[RunSpec]:
        unknown = sorted(set(self.bundles) - set(ADAPTERS))
        if unknown:
            raise ValueError(f"no study adapter for bundle(s) {unknown}; known: {sorted(ADAPTERS)}")
        if not self.losses or not self.seeds:
            raise ValueError(
                f"the grid needs at least one loss and one seed, got {list(self.losses)}, {list(self.seeds)}"
            )
        overlays = self.overlays()
        stray = sorted(set(self.settings) - set(overlays) - set(overlays.values()))
        if stray:
            raise ValueError(
                f"settings given for loss(es) {stray} that are not in the grid's losses {list(self.losses)}"
            )
        for loss in overlays.values():
            names = [RunSpec("", loss, tuple(sorted(s.items())), 0).setting_name for s in self.settings_of(loss)]
            if len(set(names)) < len(names):
                raise ValueError(f"loss {loss} has the same setting twice: {names}")
        return [
            RunSpec(bundle, overlay, tuple(sorted(setting.items())), int(seed))
            for bundle in self.bundles
            for overlay in overlays.values()
            for setting in self.settings_of(overlay)
            for seed in self.seeds
        ]

    def main_setting(self, loss: str) -> str:
        """The setting name of ``loss``'s first setting (the one Table 3 and the plots show)."""
        return RunSpec("", loss, tuple(sorted(self.settings_of(loss)[0].items())), 0).setting_name

    def main_settings(self) -> dict[str, str]:
        """Overlay name → its main setting name, for :func:`survey_tables` and the plots."""
        return {overlay: self.main_setting(overlay) for overlay in self.overlays().values()}


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
        overlay: (run folder, dataset folder, case) → image, reference and prediction slices (2D) for the figures,
            and which slice they are (``test case img0007, axial slice 12``).
        classes: () → label value of the overlay slices → (class name, RGB in [0, 1]): the figures' colour key.
        unlabelled: the label value the figures leave undrawn (background, or Cityscapes' ignored 255).
    """

    network: str
    dataset: str
    make_synthetic: Callable[..., Path]
    score: Callable[[Path, Path, Mapping[str, Any]], pd.DataFrame]
    overlay: Callable[[Path, Path, str], tuple[np.ndarray, np.ndarray, np.ndarray, str]]
    classes: Callable[[], dict[int, tuple[str, tuple[float, float, float]]]]
    unlabelled: int = 0

    @property
    def score_column(self) -> str:
        """The per-structure score the box plot shows: ``dice`` per case (Synapse), ``iou`` per class (Cityscapes)."""
        return "iou" if self.dataset == "cityscapes" else "dice"


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


def _overlay_btcv(run_dir: Path, dataset_dir: Path, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The axial slice of ``case`` with the most reference organ voxels: CT, reference, prediction, which slice."""
    import nibabel as nib

    entry = _btcv_test_cases(dataset_dir)[case]
    pred, ref, _ = _btcv_pair(run_dir, entry, case)
    image = np.asarray(nib.load(entry["image"]).dataobj, dtype=np.float32)
    z = int(np.argmax((ref > 0).sum(axis=(0, 1))))
    return image[..., z].T, ref[..., z].T, pred[..., z].T, f"test case {case}, axial slice {z}"


def _synapse_classes() -> dict[int, tuple[str, tuple[float, float, float]]]:
    """The 8 Synapse organs (default BTCV mapping) in matplotlib's ``tab10`` colours without its grey (unseen on CT)."""
    from matplotlib import colormaps

    from medseg.data.synapse import synapse_organ_names

    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]
    return {value: (name, tuple(palette[(value - 1) % 9])) for value, name in synapse_organ_names().items()}


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


def _overlay_cityscapes(run_dir: Path, dataset_dir: Path, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Val image ``case`` (else the first): RGB frame, reference and prediction trainIds (rows flipped for
    ``origin="lower"``), which image."""
    from PIL import Image

    from medseg.data import labelids_to_trainids

    cases = _cityscapes_val_cases(dataset_dir)
    entry = cases.get(case) or next(iter(cases.values()))  # scores are dataset-level ("val"): show the first image
    pred, ref = _cityscapes_pair(run_dir, entry)
    image = np.asarray(Image.open(entry["image"]).convert("RGB"))
    ref_train, pred_train = (labelids_to_trainids(a, str(entry["label"])) for a in (ref, pred))
    return image[::-1], ref_train[::-1], pred_train[::-1], f"val image {entry['name']}"


def _cityscapes_classes() -> dict[int, tuple[str, tuple[float, float, float]]]:
    """The 19 evaluated trainIds in the official Cityscapes colours (``cityscapesscripts`` label table)."""
    from medseg.data.cityscapes import CITYSCAPES_LABELS, IGNORE_INDEX

    return {
        label.train_id: (label.name, tuple(c / 255 for c in label.color))
        for label in CITYSCAPES_LABELS
        if 0 <= label.id and label.train_id != IGNORE_INDEX
    }


#: Bundle name → how the study runs it. synapse_transunet is to be added once its inference config is settled.
ADAPTERS: dict[str, BundleAdapter] = {
    "synapse_unet3d": BundleAdapter(
        "UNet 3D", "synapse", _make_synthetic_btcv, _score_btcv, _overlay_btcv, _synapse_classes, unlabelled=0
    ),
    "cityscapes_2d": BundleAdapter(
        "UNet 2D",
        "cityscapes",
        _make_synthetic_cityscapes,
        _score_cityscapes,
        _overlay_cityscapes,
        _cityscapes_classes,
        unlabelled=255,
    ),
    # a user's nnU-Net v2 / MSD dataset (medseg compare --dataset-dir): medseg.user_study
    user_study.BUNDLE: BundleAdapter(
        "DynUNet (planned)", "user", user_study.make_synthetic, user_study.score, user_study.overlay, user_study.classes
    ),
}


# --- running ----------------------------------------------------------------------------------------------------


def run_status(folder: Path, weights: Mapping[str, float] | None = None) -> str:
    """``done`` (has ``done.json``), ``interrupted`` (exists without it) or ``todo``; with the loss ``weights`` the
    run should train, ``stale`` when its ``done.json`` records other weights, or none (written before overlay names
    said what they train, when ``dice.json`` meant 0.5·CE + 0.5·Dice)."""
    done = folder / "done.json"
    if done.is_file():
        if weights is not None and json.loads(done.read_text()).get("loss_weights") != dict(weights):
            return "stale"
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
    # a resumed run logs the steps after its checkpoint again: the later value is the one the run continued from
    return pd.DataFrame(rows, columns=["tag", "step", "value"]).drop_duplicates(["tag", "step"], keep="last")


def run_one(
    spec: RunSpec,
    folder: Path,
    dataset_dir: Path,
    overrides: Mapping[str, Any],
    weights: Mapping[str, float] | None = None,
    resume: bool = False,
    trainer: Callable[..., Any] | None = None,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, predict, score ``spec`` from scratch in ``folder``; write ``done.json`` last and return it.

    ``done.json`` records the loss ``weights`` trained (default: :func:`trained_weights`) and their
    :func:`objective`, so that a later invocation can tell a finished run from one its overlay no longer describes,
    and ``record`` (e.g. the job that ran it). ``resume``: continue the training from the checkpoints in ``folder``
    (a preempted cluster job started again) instead of deleting it. ``trainer``: trains like
    :func:`medseg.bundles.train` (the default), e.g. :class:`medseg.launch.cell.TorchrunTraining`.
    """
    from medseg.bundles import train

    config = {**overrides, **dict(spec.setting)}
    weights = dict(weights) if weights is not None else trained_weights(spec.bundle, spec.loss, config)
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=resume)
    start = time.perf_counter()
    (trainer or train)(
        spec.bundle,
        spec.loss,
        folder,
        dataset_dir=str(dataset_dir),
        resume=resume,
        seed=spec.seed,
        **config,
    )
    curves = read_curves(folder / "eval")
    curves.to_csv(folder / "curves.csv", index=False)
    scores = ADAPTERS[spec.bundle].score(folder, dataset_dir, overrides)
    scores.to_csv(folder / "test_metrics.csv", index=False)
    validation = curves[curves.tag.isin(["val_mean_dice", "val_hd95"])].sort_values("step")
    last_val = validation.groupby("tag").value.last().to_dict()
    summary = {
        **spec.describe(),
        "loss_weights": weights,
        "optimises": objective(weights),
        "setting_overrides": dict(spec.setting),
        "overrides": dict(overrides),
        "seconds": round(time.perf_counter() - start, 2),
        "val_mean_dice": last_val.get("val_mean_dice"),
        "val_hd95_voxels": last_val.get("val_hd95"),
        "test": {k: float(scores[k].mean()) for k in ("dice", "hd95", "iou") if k in scores},
        **dict(record or {}),
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


#: What the runner does with a cell in each state (:func:`medseg.launch.records.cell_state`).
ACTIONS = {
    "done": "skip",
    "interrupted": "redo",
    "failed": "redo",
    "todo": "run",
    "stale": "refuse",
    "queued": "wait",
    "running": "wait",
}


def run_grid(
    grid: Grid,
    out: str | Path,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    launcher: Callable[..., Any] | None = None,
) -> pd.DataFrame:
    """Run every run of ``grid`` not finished yet; returns the plan (one row per run with ``optimises``,
    ``status``, ``action``).

    ``optimises`` is what the run trains (:func:`objective` of its loss weights). ``status`` is the cell's state
    (:func:`medseg.launch.records.cell_state`): ``todo``, ``done``, ``interrupted``, ``stale``, or for a cell given
    to a job ``queued``, ``running``, ``failed``. ``action`` is ``skip`` (finished before), ``run`` (new), ``redo``
    (interrupted or failed: deleted and rerun), ``wait`` (its job is queued or running: left alone) or ``refuse``
    (``stale``: finished with other loss weights than its overlay now gives). With ``dry_run`` nothing is written
    or trained; otherwise a stale run raises before anything is trained, naming its folder. ``launcher`` runs the
    cells to run and redo, ``launcher(grid, out, [(spec, loss weights)], log)`` (:mod:`medseg.launch`); by default
    one after another in this process.
    """
    from medseg.launch.local import LocalLauncher
    from medseg.launch.records import cell_states

    out = Path(out)
    specs = grid.runs()
    weights = [
        trained_weights(spec.bundle, spec.loss, {**grid.overrides.get(spec.bundle, {}), **dict(spec.setting)})
        for spec in specs
    ]
    rows = []
    for spec, trains, cell in zip(specs, weights, cell_states(out, specs, weights), strict=True):
        folder = spec.folder(out)
        status = cell.state
        action = ACTIONS[status]
        row = {**spec.describe(), "optimises": objective(trains), "status": status, "action": action}
        rows.append(row | {"folder": str(folder)})
    plan = pd.DataFrame(rows)
    if dry_run:
        return plan
    stale = plan[plan.status == "stale"]
    if not stale.empty:
        lines = [
            f"  {row.folder}: done.json records "
            f"{json.loads((Path(row.folder) / 'done.json').read_text()).get('loss_weights', 'no loss weights')}, "
            f"configs/losses/{row.loss}.json now trains {row.optimises}"
            for row in stale.itertuples()
        ]
        raise ValueError(
            "finished runs that their overlay no longer describes (runs from before overlays were named by what "
            "they train record no weights: dice.json then meant 0.5·CE + 0.5·Dice, now ce+dice.json):\n"
            + "\n".join(lines)
            + "\nmove or delete these folders and run again; nothing was trained or deleted"
        )
    todo = [(spec, weights[i]) for i, spec in enumerate(specs) if plan.at[i, "action"] in ("run", "redo")]
    (launcher or LocalLauncher())(grid, out, todo, log)
    return plan


# --- collecting and tables --------------------------------------------------------------------------------------


def collect(out: str | Path) -> pd.DataFrame:
    """Every finished run under ``<out>/runs`` in one table.

    One row per run, split and structure: ``split`` is ``test`` (one row per case and structure, ``dice`` and
    ``hd95`` in mm from the inference) or ``validation`` (``case``/``structure`` ``mean``: the last validation
    epoch's mean Dice over cases and organs, ``hd95`` in voxels of the resampled grid: MONAI's handler).
    Columns: ``bundle, network, dataset, loss, optimises, setting, seed, split, case, structure, dice, hd95``
    (+ ``iou``); ``loss`` is the overlay's name, ``optimises`` its weighted terms (``0.5·ce + 0.5·dice``).

    Raises:
        ValueError: a ``done.json`` records no loss weights (a run from before overlay names said what they train).
    """
    frames = []
    for done in sorted(Path(out).glob("runs/*/*/*/seed*/done.json")):
        summary = json.loads(done.read_text())
        if "optimises" not in summary:
            raise ValueError(
                f"{done} records no loss weights: the run was made before overlays were named by what they train "
                "(dice.json then meant 0.5·CE + 0.5·Dice, now ce+dice.json); move its folder out of "
                f"{Path(out) / 'runs'} or delete it and run the study again"
            )
        adapter = ADAPTERS[summary["bundle"]]
        keys = {k: summary[k] for k in ("bundle", "loss", "optimises", "setting", "seed")}
        keys |= {"network": adapter.network, "dataset": adapter.dataset}
        test = pd.read_csv(done.parent / "test_metrics.csv").assign(split="test", **keys)
        validation = pd.DataFrame([{"split": "validation", "case": "mean", "structure": "mean", **keys}])
        validation = validation.assign(dice=summary["val_mean_dice"], hd95=summary["val_hd95_voxels"])
        frames += [test, validation]
    columns = ["bundle", "network", "dataset", "loss", "optimises", "setting", "seed", "split", "case", "structure"]
    columns += ["dice", "hd95"]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True)
    return table[columns + [c for c in table.columns if c not in columns]]


def _per_run_case(test: pd.DataFrame) -> pd.DataFrame:
    """Mean over structures of each case of each run (the per-case Dice the box plot shows)."""
    keys = ["network", "loss", "setting", "seed", "case"]
    return test.groupby(keys, sort=False)[["dice", "hd95"]].mean().reset_index()


def survey_tables(metrics: pd.DataFrame, main_settings: Mapping[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """The survey's tables from :func:`collect`'s table (test split; Dice in %, HD95 in mm), indexed by network and
    loss (the overlay trained, e.g. ``ce+dice``).

    - ``table3_synapse``: per network and loss (its main setting): ``seeds`` and test ``cases`` averaged, mean DSC
      and HD95 (organs averaged within a case, then cases, then seeds) with their ``std`` over seeds, and per-organ
      DSC and HD95 (means over cases and seeds).
    - ``table4_cityscapes``: per network and loss (its main setting): ``seeds``, mIoU (%) and its std over seeds —
      only when Cityscapes runs with ``iou`` exist.
    - ``table5_hyperparameters``: per network, loss (focal, Tversky, focal Tversky, alone or with CE) and setting:
      ``seeds``, DSC and HD95 mean and std over seeds.

    A std is the sample standard deviation (ddof 1) of the per-seed values: NaN (empty in CSV, ``–`` in markdown)
    with one seed, never 0.0. ``main_settings`` maps a loss to the setting name Tables 3 and 4 use (default:
    ``default``).
    """
    test = metrics[metrics.split == "test"]
    main_settings = main_settings or {}
    main = test[test.setting == test.loss.map(lambda loss: main_settings.get(loss, "default"))]
    tables: dict[str, pd.DataFrame] = {}
    synapse = main[main.dataset == "synapse"]
    if not synapse.empty:
        per_case = _per_run_case(synapse)
        per_seed = per_case.groupby(["network", "loss", "seed"], sort=False)[["dice", "hd95"]].mean().reset_index()
        per_seed["dice"] *= 100
        overall = mean_std_n(per_seed, ["network", "loss"], ["dice", "hd95"])
        cases = per_case.groupby(["network", "loss"], sort=False).case.nunique()
        overall.insert(1, "cases", cases)
        overall = overall.rename(columns={"n": "seeds", "dice": "DSC", "dice std": "DSC std"})
        overall = overall.rename(columns={"hd95": "HD95", "hd95 std": "HD95 std"})
        organs = synapse.groupby(["network", "loss", "structure"], sort=False)[["dice", "hd95"]].mean().unstack()
        order = list(dict.fromkeys(synapse.structure))
        organ_columns = {f"{s} DSC": 100 * organs[("dice", s)] for s in order} | {
            f"{s} HD95": organs[("hd95", s)] for s in order
        }
        tables["table3_synapse"] = pd.concat([overall, pd.DataFrame(organ_columns)], axis=1)
    cityscapes = main[main.dataset == "cityscapes"]
    if not cityscapes.empty and "iou" in cityscapes:
        per_seed = cityscapes.groupby(["network", "loss", "seed"], sort=False).iou.mean().reset_index()
        per_seed["iou"] *= 100
        table = mean_std_n(per_seed, ["network", "loss"], ["iou"])
        tables["table4_cityscapes"] = table.rename(columns={"n": "seeds", "iou": "mIoU", "iou std": "mIoU std"})
    study = test[(test.dataset == "synapse") & test.loss.map(base_loss).isin(HYPERPARAMETER_LOSSES)]
    if not study.empty:
        keys = ["network", "loss", "setting"]
        per_seed = study.groupby([*keys, "seed"], sort=False)[["dice", "hd95"]].mean().reset_index()
        per_seed["dice"] *= 100
        table = mean_std_n(per_seed, keys, ["dice", "hd95"]).rename(columns={"n": "seeds"})
        table = table.rename(columns={"dice": "DSC", "dice std": "DSC std", "hd95": "HD95", "hd95 std": "HD95 std"})
        tables["table5_hyperparameters"] = table
    return tables


#: What each table's numbers are, written under its markdown.
TABLE_NOTES = {
    "table3_synapse": "Test cases, each loss's main setting. DSC (%) and HD95 (mm): organs averaged within a case, "
    "then cases, then seeds; organ columns: means over cases and seeds.",
    "table4_cityscapes": "Val images, each loss's main setting. mIoU (%): the official dataset-level mIoU of each "
    "run, averaged over seeds.",
    "table5_hyperparameters": "Test cases. DSC (%) and HD95 (mm): mean over cases and organs per seed, then over "
    "seeds.",
    "table_own_dataset": "Test cases of the --dataset-dir dataset (labelsTs, or a held-out 20% of the training "
    "cases), each loss's main setting. DSC (%) and HD95 (mm): structures averaged within a case, then cases, then "
    "seeds.",
}
#: Written under every markdown table.
COMMON_NOTE = (
    "loss: the overlay trained (`ce+X` = 0.5·CE + 0.5·X; `X` = X alone). seeds: runs averaged. std: sample "
    "standard deviation over seeds, – with one seed."
)


def write_tables(metrics: pd.DataFrame, tables: Mapping[str, pd.DataFrame], folder: str | Path) -> list[Path]:
    """``metrics.csv`` (the whole table) and each survey table as ``<name>.csv`` (a missing std is an empty cell)
    and ``<name>.md`` (shown as ``–``, with a note of what the numbers are)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(folder / "metrics.csv", index=False)
    written = [folder / "metrics.csv"]
    for name, table in tables.items():
        table.to_csv(folder / f"{name}.csv")
        note = " ".join(filter(None, (TABLE_NOTES.get(name), COMMON_NOTE)))
        (folder / f"{name}.md").write_text(to_markdown(table) + f"\n\n{note}\n")
        written += [folder / f"{name}.csv", folder / f"{name}.md"]
    return written


# --- plots ------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure: Any, path: Path) -> Path:
    """PNG at 100 dpi; ``bbox_inches="tight"`` grows the canvas to every title and legend (nothing is cut off)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _title(text: str, width_inches: float) -> str:
    """``text`` wrapped to about the figure's width (11 characters an inch at the default title size)."""
    import textwrap

    return textwrap.fill(text, width=max(30, int(11 * width_inches)))


def _line_style(index: int) -> dict[str, Any]:
    """The ``index``-th loss's colour (``tab10``), line style and width: neighbours differ in all three, so lines
    that lie on top of each other stay distinguishable (a thin dashed line over a thick one)."""
    from matplotlib import colormaps

    colour, style = colormaps["tab10"].colors[index % 10], ("-", "--", "-.", ":")[index % 4]
    return {"color": colour, "linestyle": style, "linewidth": 2.4 - 0.35 * (index % 4)}  # later ones drawn thinner


def _main_runs(out: Path, grid: Grid, bundle: str) -> dict[str, list[Path]]:
    """Loss (overlay name) → the finished run folders of its main setting, one per seed."""
    runs: dict[str, list[Path]] = {}
    for spec in grid.runs():
        if spec.bundle == bundle and spec.setting_name == grid.main_setting(spec.loss):
            if run_status(spec.folder(out)) == "done":
                runs.setdefault(spec.loss, []).append(spec.folder(out))
    return runs


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def plot_curves(out: Path, grid: Grid, bundle: str, path: Path) -> Path:
    """Training loss per iteration and the validation score the bundle selects on (mean Dice, or mIoU for
    Cityscapes) per epoch, one line per loss (its main setting, mean over seeds), each loss in its own colour, line
    style and width, keyed in one legend with its number of seeds."""
    column = ADAPTERS[bundle].score_column
    name = {"dice": "mean Dice", "iou": "mIoU"}[column]
    figure = _figure(11.0, 4.0)
    axes = figure.subplots(1, 2)
    for index, (loss, folders) in enumerate(_main_runs(out, grid, bundle).items()):
        curves = pd.concat([pd.read_csv(f / "curves.csv") for f in folders])
        for axis, tag in zip(axes, ("train_loss", f"val_mean_{column}"), strict=True):
            line = curves[curves.tag == tag].groupby("step").value.mean()
            marker = None if tag == "train_loss" else "o"
            label = f"{loss} ({_seeds(len(folders))})"
            axis.plot(line.index, line.to_numpy(), marker=marker, label=label, **_line_style(index))
    axes[0].set(title="training loss (each on its own scale)", xlabel="iteration", ylabel="loss")
    axes[1].set(title=f"validation {name}", xlabel="epoch", ylabel=name)
    figure.suptitle(_title(f"{bundle}: each loss's main setting, mean over seeds", 11.0))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", title="loss trained", fontsize="small")
    return _save(figure, path)


def _colour_key(classes: Mapping[int, tuple[str, tuple[float, float, float]]]) -> list[Any]:
    from matplotlib.patches import Patch

    return [Patch(facecolor=colour, edgecolor="none", label=name) for name, colour in classes.values()]


def _paint(labels: np.ndarray, classes: Mapping[int, tuple[str, tuple[float, float, float]]], alpha: float):
    """RGBA image of a label map: each class in its colour, every other value (background, ignored) transparent."""
    rgba = np.zeros((*labels.shape, 4))
    for value, (_, colour) in classes.items():
        rgba[labels == value] = (*colour, alpha)
    return rgba


def plot_overlays(out: Path, grid: Grid, bundle: str, path: Path) -> Path:
    """One slice of the first scored case (Synapse: its axial slice with the most organ voxels; Cityscapes: a val
    image): the reference and each loss's prediction (main setting, first seed) over the image, with a colour key
    of the bundle's classes (Synapse organs; Cityscapes' 19 classes in the official colours)."""
    runs = _main_runs(out, grid, bundle)
    adapter = ADAPTERS[bundle]
    dataset = dataset_for(grid, bundle, out)
    first = next(iter(runs.values()))[0]
    case = str(pd.read_csv(first / "test_metrics.csv").case.iloc[0])
    image, reference, _, where = adapter.overlay(first, dataset, case)
    panels = [("reference", reference)]
    panels += [(loss, adapter.overlay(folders[0], dataset, case)[2]) for loss, folders in runs.items()]
    classes = adapter.classes()
    width = max(6.0, 2.6 * len(panels))
    key_columns = max(1, min(len(classes), int(width / 1.5)))
    key_rows = -(-len(classes) // key_columns)
    panel_height = 2.4 * image.shape[0] / image.shape[1]  # panels about 2.4 inches wide, at the image's aspect
    figure = _figure(width, panel_height + 0.9 + 0.25 * key_rows)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, labels) in zip(axes, panels, strict=True):
        axis.imshow(image, cmap="gray", origin="lower")
        axis.imshow(_paint(labels, classes, 0.6), origin="lower", interpolation="nearest")
        axis.set(title=title, xticks=[], yticks=[])
    title = f"{bundle}, {where}: reference and each loss's prediction ({first.name}, main setting)"
    figure.suptitle(_title(title, width))
    figure.legend(handles=_colour_key(classes), loc="outside lower center", ncols=key_columns, fontsize="small")
    return _save(figure, path)


def plot_score_boxes(metrics: pd.DataFrame, main_settings: Mapping[str, str], bundle: str, path: Path) -> Path:
    """Box plot per loss (main setting, all seeds), every value drawn as a point, n under each loss: per-case Dice
    (organs averaged within a case) for Synapse, per-class IoU (the official dataset-level IoU of each class) for
    Cityscapes."""
    adapter = ADAPTERS[bundle]
    column = adapter.score_column
    test = metrics[(metrics.split == "test") & (metrics.bundle == bundle)]
    test = test[test.setting == test.loss.map(lambda loss: main_settings.get(loss, "default"))]
    if column == "dice":
        values, what = _per_run_case(test), "per-case Dice on the test cases (organs averaged within a case)"
    else:
        values, what = test, "per-class IoU on the val images (each class's dataset-level IoU)"
    present = set(values.loss)
    losses = [loss for loss in main_settings if loss in present] + sorted(present - set(main_settings))
    samples = [values[values.loss == loss][column].dropna().to_numpy() for loss in losses]
    width = max(5.0, 0.9 * len(losses) + 1.5)
    figure = _figure(width, 4.5)
    axis = figure.subplots()
    labels = [f"{loss} (n={len(v)})" for loss, v in zip(losses, samples, strict=True)]
    axis.boxplot(samples, tick_labels=labels, showfliers=False)  # every value is drawn as a point below
    for position, sample in enumerate(samples, start=1):
        axis.plot(position + np.linspace(-0.12, 0.12, len(sample)), sample, "o", color="black", alpha=0.5, ms=3)
    name = {"dice": "Dice", "iou": "IoU"}[column]
    axis.set(title=_title(f"{bundle}: {what}; each loss's main setting, all seeds", width), ylabel=name)
    axis.tick_params(axis="x", labelrotation=30)
    for label in axis.get_xticklabels():
        label.set(horizontalalignment="right", rotation_mode="anchor")
    return _save(figure, path)


def plot_all(out: str | Path, grid: Grid, metrics: pd.DataFrame) -> list[Path]:
    """Curves, overlays and the score box plot of every bundle with finished runs, under ``<out>/plots``:
    ``curves_<bundle>.png``, ``overlays_<bundle>.png``, ``<dice|iou>_boxes_<bundle>.png``."""
    out = Path(out)
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    main_settings = grid.main_settings()
    written = []
    for bundle in grid.bundles:
        if not _main_runs(out, grid, bundle):
            continue
        boxes = folder / f"{ADAPTERS[bundle].score_column}_boxes_{bundle}.png"
        written.append(plot_curves(out, grid, bundle, folder / f"curves_{bundle}.png"))
        written.append(plot_overlays(out, grid, bundle, folder / f"overlays_{bundle}.png"))
        written.append(plot_score_boxes(metrics, main_settings, bundle, boxes))
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
    return Grid(
        bundles=["synapse_unet3d"],
        losses=sorted(p.stem for p in LOSS_OVERLAYS.glob("*.json") if not p.stem.startswith(WITH_CE)),
        seeds=(0, 1, 2),
        settings=SURVEY_SETTINGS,
    )


def _tiny_grid() -> Grid:
    return Grid(
        bundles=["synapse_unet3d"],
        losses=["dice_ce", "dice", "focal", "tversky"],
        seeds=(0,),
        settings={"focal": [{}, {"loss_kwargs#focal#gamma": 1.0}]},
        overrides={
            "synapse_unet3d": CPU_UNET3D,
            "cityscapes_2d": CPU_CITYSCAPES,
            user_study.BUNDLE: user_study.CPU_GENERIC,
        },
        synthetic={"seed": 0},  # each bundle's writer has CPU-size defaults
    )


#: ``tiny``: minutes on 2 CPU cores on synthetic data. ``survey``: every loss (alone or with CE: ``--protocol``),
#: the Table 5 settings,
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
    parser.add_argument(
        "--losses", nargs="+", help="replace the preset's losses (loss names, or overlay names such as ce+dice)"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=PROTOCOLS[0],
        help="with-ce (default): train each loss as 0.5·CE + 0.5·loss (configs/losses/ce+<loss>.json; losses that "
        "hold CE already run alone); alone: configs/losses/<loss>.json",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="replace the preset's seeds")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="LOSS:ID=VALUE[;ID=VALUE]",
        help="add a hyperparameter setting, e.g. 'focal:loss_kwargs#focal#gamma=1.0' (repeatable)",
    )
    parser.add_argument("--data", nargs="*", default=[], metavar="BUNDLE=DIR", help="dataset folder per bundle")
    parser.add_argument(
        "--dataset-dir", help="an nnU-Net v2 raw or MSD dataset: compare the losses on it with the generic_3d bundle"
    )
    parser.add_argument("--override", nargs="*", default=[], metavar="ID=VALUE", help="config ids for every run")
    parser.add_argument("--dry-run", action="store_true", help="list the grid and each run's status; run nothing")
    add_launch_arguments(parser)
    return parser


def grid_from_args(args: argparse.Namespace) -> Grid:
    grid = PRESETS[args.preset]()
    grid.bundles = [user_study.BUNDLE] if args.dataset_dir else (args.bundles or grid.bundles)
    grid.losses = args.losses or grid.losses
    grid.seeds = args.seeds or grid.seeds
    grid.protocol = args.protocol
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
    if args.dataset_dir:  # one planned dataset for the whole grid: medseg.user_study
        grid.datasets = {user_study.BUNDLE: args.dataset_dir}
        shared = user_study.prepare(args.dataset_dir, args.out)
        grid.overrides[user_study.BUNDLE] = {**grid.overrides[user_study.BUNDLE], **shared, **extra}
    return grid


def write_outputs(out: str | Path, grid: Grid) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    """The tables and plots of the finished runs under ``<out>``: the tables and the files written."""
    out = Path(out)
    metrics = collect(out)
    tables = survey_tables(metrics, grid.main_settings()) | user_study.dataset_tables(metrics, grid.main_settings())
    return tables, write_tables(metrics, tables, out / "tables") + plot_all(out, grid, metrics)


def _print_outputs(out: Path, grid: Grid) -> int:
    if not any(run_status(spec.folder(out)) == "done" for spec in grid.runs()):
        raise UserError(f"no finished run of this grid under {out / 'runs'}: nothing to tabulate")
    tables, written = write_outputs(out, grid)
    for name, table in tables.items():
        print(f"\n{name}\n{table.round(2).to_string(na_rep='–')}")
    print("\nwritten: " + ", ".join(str(p) for p in written))
    return 0


def _print_status(out: Path, grid: Grid) -> int:
    from medseg.launch.records import grid_status

    status = grid_status(grid, out)
    print(status.to_string(index=False))
    counts = status.state.value_counts()
    print(f"\n{len(status)} cells: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``compare_losses``: run (or ``--dry-run`` list) the grid, then write tables and plots under ``--out``;
    ``--status`` shows the grid's state, ``--tables-only`` writes the tables of what is done."""
    args = build_parser().parse_args(argv)
    modes = [flag for flag in ("dry_run", "status", "tables_only") if getattr(args, flag)]
    if len(modes) > 1:
        raise UserError(" and ".join("--" + m.replace("_", "-") for m in modes) + " exclude each other")
    grid = grid_from_args(args)
    out = Path(args.out)
    if args.status:
        return _print_status(out, grid)
    if args.tables_only:
        return _print_outputs(out, grid)
    launcher = launcher_from_args(args)
    print(f"protocol {grid.protocol}: " + ", ".join(f"{a} → {b}" for a, b in grid.overlays().items()))
    plan = run_grid(grid, out, dry_run=args.dry_run, launcher=launcher)
    columns = ["bundle", "loss", "optimises", "setting", "seed", "status"]
    columns += ["folder"] if args.dry_run else ["action"]
    print(plan[columns].to_string(index=False))
    if args.dry_run:
        return 0
    unfinished = plan.action.isin(["run", "redo", "wait"]).sum()
    if not launcher.waits and unfinished:
        again = "medseg compare <the same options>"
        print(
            f"\n{unfinished} cells are with the cluster. Watch them with `{again} --status`; the job that completes "
            f"the grid writes the tables and plots, `{again} --tables-only` writes those of the finished runs now."
        )
        return 0
    waiting = (plan.action == "wait").sum()
    if waiting:
        print(f"\n{waiting} cells have jobs queued or running: the tables hold the finished runs only")
    return 0 if waiting == len(plan) else _print_outputs(out, grid)
