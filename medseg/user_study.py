"""The loss comparison on a user's own dataset: how ``medseg compare --dataset-dir X`` runs the ``generic_3d`` bundle.

:func:`prepare` plans the dataset once for the whole grid (``<out>/plans/<dataset>/plan.json``: every run trains
the same network on the same preprocessing, only the loss differs) and chooses the test cases: the labelled
``imagesTs`` cases, or, when the dataset has none, a seeded 20 % of the training cases set aside before the
validation split (``test_fraction``), so that the test cases never take part in training or model selection.
:func:`score` predicts the test cases with a run's ``models/model.pt`` (predictions in the dataset's own file
format and geometry) and scores them per case and structure in mm (``clinical`` convention: Dice, HD95).
:func:`dataset_tables` is the study's table for such a dataset.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg.data.image_files import load_image, read_geometry
from medseg.data.synthetic_mri import make_nnunet
from medseg.data.user_dataset import read_user_dataset, user_datalist
from medseg.metrics import get_convention, score_label_maps
from medseg.metrics.stats import mean_std_n

__all__ = [
    "BUNDLE",
    "CPU_GENERIC",
    "HOLDOUT_FRACTION",
    "classes",
    "dataset_tables",
    "make_synthetic",
    "overlay",
    "prepare",
    "score",
]

logger = logging.getLogger(__name__)

BUNDLE = "generic_3d"
#: Share of the training cases held out as test cases when a dataset has no labelled test cases.
HOLDOUT_FRACTION = 0.2
#: generic_3d at CPU size (the tiny preset): the plan's ``cpu`` configuration, 40 short epochs, plain flips.
CPU_GENERIC = {
    "configuration": "cpu",
    "max_epochs": 40,
    "val_interval": 10,
    "num_workers": 0,
    "augmentation": "monai",
    "learning_rate": 0.003,
    "train#trainer#key_train_metric": "$None",
    "train#trainer#postprocessing": "$None",
}
#: Config ids the inference config shares with the training config (plan, split and network size).
_INFERENCE_IDS = ("plan_file", "configuration", "fold", "n_folds", "val_fraction", "test_fraction", "split_seed")
#: Class names of the dataset the study runs on (label value → name), for the figures' colour key.
_CLASS_NAMES: dict[int, str] = {}


def make_synthetic(root: Path, cases: int = 8, size: int = 32, seed: int = 0) -> Path:
    """Synthetic two-channel MRI in the nnU-Net v2 layout (3 classes, 2 labelled test cases): the default data."""
    make_nnunet(root, cases=cases, test_cases=2, size=size, channels=("T2", "ADC"), seed=seed)
    _CLASS_NAMES.update(read_user_dataset(root).labels)
    return root


def prepare(dataset_dir: str | Path, out: str | Path, max_cases: int = 50) -> dict[str, Any]:
    """Plan ``dataset_dir`` once for a study under ``out``; returns the config overrides every run shares.

    ``plan_file`` is ``<out>/plans/<dataset folder name>/plan.json`` (reused when it is there and made for this
    folder); ``test_fraction`` is 0 when the dataset has labelled test cases, else :data:`HOLDOUT_FRACTION`.
    """
    from medseg.planning import ensure_plan, plan_dataset, plan_summary

    dataset = read_user_dataset(dataset_dir)
    name = re.sub(r"[^\w.-]", "_", Path(dataset_dir).resolve().name)
    plan_file = Path(out) / "plans" / name / "plan.json"
    if plan_file.is_file():
        plan = ensure_plan(plan_file, dataset_dir, create=False)
    else:
        plan = plan_dataset(dataset_dir, plan_file, max_cases=max_cases, progress=False)
        logger.info("planned %s:\n%s", dataset_dir, plan_summary(plan))
    _CLASS_NAMES.clear()
    _CLASS_NAMES.update(dataset.labels)
    test_fraction = 0.0 if dataset.labelled_test else HOLDOUT_FRACTION
    if test_fraction:
        logger.warning(
            "%s has no labelled test cases (imagesTs with labelsTs): %d%% of its training cases are held out as test "
            "cases (seed 1234), before the validation split",
            dataset_dir,
            round(100 * test_fraction),
        )
    return {"plan_file": str(plan_file), "test_fraction": test_fraction}


def _test_entries(dataset_dir: Path, overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    return user_datalist(
        dataset_dir,
        "test",
        test_fraction=float(overrides.get("test_fraction", 0.0)),
        seed=int(overrides.get("split_seed", 1234)),
    )


def _prediction(run_dir: Path, dataset_dir: Path, name: str) -> Path:
    ending = read_user_dataset(dataset_dir).file_ending
    path = run_dir / "predictions" / f"{name}{ending}"
    if not path.is_file():
        raise FileNotFoundError(f"no prediction {path} for test case {name}")
    return path


def _label_map(path: str | Path) -> np.ndarray:
    return np.rint(np.asarray(load_image(path))[0]).astype(np.int64)


def score(run_dir: Path, dataset_dir: Path, overrides: Mapping[str, Any]) -> pd.DataFrame:
    """Predict the test cases with ``models/model.pt`` and score them per case and structure in mm (``clinical``).

    Returns ``case``, ``structure``, ``dice``, ``hd95`` (mm, on the reference's grid and spacing).
    """
    from medseg.bundles import infer

    shared = {k: v for k, v in overrides.items() if k in _INFERENCE_IDS}
    infer(
        BUNDLE,
        run_dir,
        dataset_dir=str(dataset_dir),
        output_dir=str(run_dir / "predictions"),
        **{"dataloader#num_workers": 0},
        **shared,
    )
    names = {v: n for v, n in read_user_dataset(dataset_dir).labels.items() if v != 0}
    convention = get_convention("clinical")
    rows = []
    for entry in _test_entries(Path(dataset_dir), overrides):
        reference = read_geometry(entry["label"])
        pred, ref = _label_map(_prediction(run_dir, dataset_dir, entry["name"])), _label_map(entry["label"])
        for row in score_label_maps(pred, ref, reference.spacing, names, convention):
            rows.append({"case": entry["name"], **row})
    table = pd.DataFrame(rows)
    return table[["case", "structure", "dice", "hd95_mm"]].rename(columns={"hd95_mm": "hd95"})


def overlay(run_dir: Path, dataset_dir: Path, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The slice of test case ``case`` with the most labelled voxels (3D: along the last axis): first channel,
    reference and prediction, rows and columns in the file's voxel order."""
    dataset = read_user_dataset(dataset_dir)
    _CLASS_NAMES.update(dataset.labels)  # the colour key (classes()) names what this dataset calls its labels
    entries = {e["name"]: e for e in user_datalist(dataset, "all")}  # held-out test cases are training cases
    if dataset.labelled_test:
        entries |= {e["name"]: e for e in user_datalist(dataset, "test")}
    entry = entries[case]
    image = np.asarray(load_image(entry["image"][0]))[0]
    ref, pred = _label_map(entry["label"]), _label_map(_prediction(run_dir, dataset_dir, case))
    if ref.ndim == 2:
        return image.T, ref.T, pred.T, f"test case {case}"
    z = int(np.argmax((ref > 0).sum(axis=(0, 1))))
    return image[..., z].T, ref[..., z].T, pred[..., z].T, f"test case {case}, slice {z} of the last axis"


def classes() -> dict[int, tuple[str, tuple[float, float, float]]]:
    """The study dataset's classes in matplotlib's ``tab10`` colours (without its grey)."""
    from matplotlib import colormaps

    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]
    names = {v: n for v, n in _CLASS_NAMES.items() if v != 0} or {1: "label 1"}
    return {value: (name, tuple(palette[(value - 1) % 9])) for value, name in sorted(names.items())}


def dataset_tables(metrics: pd.DataFrame, main_settings: Mapping[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """``table_own_dataset``: per network and loss (its main setting) on the test cases of the user's dataset:
    ``seeds``, ``cases``, mean DSC (%) and HD95 (mm) with their std over seeds (structures averaged within a case,
    then cases, then seeds), and per-structure DSC and HD95 (means over cases and seeds)."""
    main_settings = main_settings or {}
    test = metrics[(metrics.split == "test") & (metrics.dataset == "user")]
    test = test[test.setting == test.loss.map(lambda loss: main_settings.get(loss, "default"))]
    if test.empty:
        return {}
    per_case = test.groupby(["network", "loss", "seed", "case"], sort=False)[["dice", "hd95"]].mean().reset_index()
    per_seed = per_case.groupby(["network", "loss", "seed"], sort=False)[["dice", "hd95"]].mean().reset_index()
    per_seed["dice"] *= 100
    overall = mean_std_n(per_seed, ["network", "loss"], ["dice", "hd95"])
    overall.insert(1, "cases", per_case.groupby(["network", "loss"], sort=False).case.nunique())
    overall = overall.rename(columns={"n": "seeds", "dice": "DSC", "dice std": "DSC std"})
    overall = overall.rename(columns={"hd95": "HD95", "hd95 std": "HD95 std"})
    structures = test.groupby(["network", "loss", "structure"], sort=False)[["dice", "hd95"]].mean().unstack()
    order = list(dict.fromkeys(test.structure))
    columns = {f"{s} DSC": 100 * structures[("dice", s)] for s in order}
    columns |= {f"{s} HD95": structures[("hd95", s)] for s in order}
    return {"table_own_dataset": pd.concat([overall, pd.DataFrame(columns)], axis=1)}
