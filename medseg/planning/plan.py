"""``medseg plan``: a user dataset's training plan from its fingerprint, in the spirit of nnU-Net's experiment planning.

The plan (``plan.json``, described field by field in docs/own_dataset.md) holds what the ``generic_3d`` bundle
needs: the target spacing (the median, or nnU-Net's anisotropy rule), the per-channel normalisation (chosen from
the channel names as nnU-Net does, with the training set's foreground statistics for CT), the classes from
``dataset.json``, and two configurations, ``gpu`` (within a GPU memory budget, nnU-Net's network widths) and
``cpu`` (a small network and patch for machines without a GPU).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.user_dataset import UserDataset, read_user_dataset

from .fingerprint import extract_fingerprint, orientation_codes
from .topology import configure

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "CPU_MEMORY_GB",
    "GPU_MEMORY_GB",
    "PLAN_VERSION",
    "ensure_plan",
    "load_plan",
    "make_plan",
    "normalization_scheme",
    "plan_dataset",
    "plan_summary",
    "target_spacing",
    "write_plan",
]

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
#: An axis is anisotropic when its spacing exceeds this many times the others' (nnU-Net's ``ANISO_THRESHOLD``).
ANISOTROPY_THRESHOLD = 3.0
#: Default GPU memory budget (nnU-Net's default target).
GPU_MEMORY_GB = 8.0
#: The CPU configuration's memory budget: small enough for a laptop, and for minutes per epoch on a few cores.
CPU_MEMORY_GB = 0.5
#: Network widths: nnU-Net's for the GPU (32 doubling to 320 in 3D, 512 in 2D), a quarter of that on the CPU.
WIDTHS = {"gpu": (32, {3: 320, 2: 512}), "cpu": (8, {3: 64, 2: 128})}
#: nnU-Net's normalisation scheme for a channel name (case-insensitive); any other name gets ``zscore``.
_SCHEMES = {"ct": "ct", "nonorm": "noNorm", "zscore": "zscore", "rescale_to_0_1": "rescale_to_0_1"}
_SCHEMES["rgb_to_0_1"] = "rgb_to_0_1"
#: nnU-Net masks z-scoring to the non-zero region when cropping to it keeps less than this fraction of the image.
_NONZERO_MASK_BELOW = 0.75


def normalization_scheme(channel_name: str) -> str:
    """nnU-Net's scheme for a channel: ``ct``, ``noNorm``, ``rescale_to_0_1``, ``rgb_to_0_1``, else ``zscore``."""
    return _SCHEMES.get(channel_name.casefold(), "zscore")


def target_spacing(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[float]], threshold: float = ANISOTROPY_THRESHOLD
) -> tuple[list[float], bool]:
    """The median spacing per axis, and whether nnU-Net's anisotropy rule changed it.

    Rule: when the coarsest axis of the median spacing is more than ``threshold`` times coarser than the others and
    has fewer than ``1/threshold`` as many voxels (median shape) as the smallest other axis, its target becomes the
    10th percentile of that axis' spacings, but no finer than the coarsest other axis: thick-slice datasets are not
    resampled to the median slice thickness, which would blur the thin-slice cases.
    """
    spacings_array = np.asarray(spacings, dtype=np.float64)
    target = np.median(spacings_array, axis=0)
    median_shape = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != coarse]
    if not others:
        return target.tolist(), False
    anisotropic_spacing = target[coarse] > threshold * max(target[others])
    anisotropic_voxels = median_shape[coarse] * threshold < min(median_shape[others])
    if anisotropic_spacing and anisotropic_voxels:
        target[coarse] = max(float(np.percentile(spacings_array[:, coarse], 10)), float(max(target[others])))
        return target.tolist(), True
    return target.tolist(), False


def _channels(dataset: UserDataset, fingerprint: Mapping[str, Any]) -> list[dict[str, Any]]:
    use_mask = fingerprint["median_relative_size_after_crop"] < _NONZERO_MASK_BELOW
    channels = []
    for index, name in enumerate(dataset.channel_names):
        scheme = normalization_scheme(name)
        stats = fingerprint["intensity"][index]
        entry: dict[str, Any] = {"index": index, "name": name, "normalization": scheme}
        entry["use_nonzero_mask"] = bool(use_mask and scheme == "zscore")
        if scheme == "ct":
            if stats["mean"] is None:
                raise ValueError(f"channel {index} ({name}) is CT, but the sampled training cases have no foreground")
            entry |= {
                "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
                "mean": stats["mean"],
                "std": stats["std"],
            }
        channels.append(entry)
    return channels


def _squeeze_axis(shapes: Sequence[Sequence[int]]) -> int | None:
    """The axis that is a single voxel in every case (2D images stored as x × y × 1 volumes), if any."""
    array = np.asarray(shapes)
    if array.shape[1] < 3:
        return None
    single = [a for a in range(array.shape[1]) if (array[:, a] == 1).all()]
    return single[0] if single else None


def make_plan(
    dataset: UserDataset,
    fingerprint: Mapping[str, Any],
    gpu_memory_gb: float = GPU_MEMORY_GB,
    cpu_memory_gb: float = CPU_MEMORY_GB,
) -> dict[str, Any]:
    """The plan of ``dataset`` from its ``fingerprint`` (:func:`~medseg.planning.fingerprint.extract_fingerprint`)."""
    file_dims = len(fingerprint["spacings"][0])
    squeeze = _squeeze_axis(fingerprint["shapes"])
    network_axes = [a for a in range(file_dims) if a != squeeze]
    spacings = np.asarray(fingerprint["spacings"], dtype=np.float64)
    crop_shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=np.float64)
    spacing = np.median(spacings, axis=0)  # the squeezed axis keeps its median spacing: it stays one voxel
    spacing[network_axes], anisotropic = target_spacing(spacings[:, network_axes], crop_shapes[:, network_axes])
    names = sorted(dataset.training)
    case_spacings = spacings[[names.index(n) for n in fingerprint["sampled_cases"]]]
    median_shape = np.median(crop_shapes * case_spacings / spacing, axis=0)
    dataset_voxels = float(np.prod(median_shape)) * len(dataset.training)
    configurations = {}
    for name, budget in (("gpu", gpu_memory_gb), ("cpu", cpu_memory_gb)):
        base, maximum = WIDTHS[name]
        configurations[name] = configure(
            [spacing[a] for a in network_axes],
            [median_shape[a] for a in network_axes],
            len(dataset.channel_names),
            dataset.num_classes,
            budget,
            base,
            maximum[len(network_axes)],
            dataset_voxels,
        )
    return {
        "medseg_plan_version": PLAN_VERSION,
        "dataset": {
            "root": str(dataset.root.resolve()),
            "dataset_json": str(dataset.dataset_json.resolve()),
            "name": dataset.name,
            "layout": dataset.layout,
            "file_ending": dataset.file_ending,
            "num_training": len(dataset.training),
            "num_test": len(dataset.test),
            "num_labelled_test": len(dataset.labelled_test),
        },
        "channels": _channels(dataset, fingerprint),
        "labels": {str(v): dataset.labels[v] for v in sorted(dataset.labels)},
        "class_names": dataset.class_names,
        "num_classes": dataset.num_classes,
        "ignore_label": dataset.ignore_label,
        "label_values": dataset.label_values,
        "spatial_dims": len(network_axes),
        "orientation": orientation_codes(file_dims),
        "squeeze_axis": squeeze,
        "target_spacing": [float(s) for s in spacing],
        "anisotropic": anisotropic,
        "median_shape": [float(round(s, 1)) for s in median_shape],
        "configurations": configurations,
        "fingerprint": dict(fingerprint),
    }


def write_plan(plan: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``plan`` as JSON atomically (temporary file, then rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".plan-", suffix=".json", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        json.dump(plan, file, indent=2)
    Path(temporary).replace(path)
    return path


_REQUIRED = ("dataset", "channels", "num_classes", "label_values", "target_spacing", "orientation", "configurations")


def load_plan(path: str | Path) -> dict[str, Any]:
    """Read a ``plan.json``; a file that is not a medseg plan of this version raises, naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plan file does not exist: {path} (write it with: medseg plan DATASET --out {path})")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"plan file {path} is not valid JSON: {err}") from err
    if not isinstance(plan, dict) or plan.get("medseg_plan_version") != PLAN_VERSION:
        raise ValueError(f"{path} is not a medseg plan of version {PLAN_VERSION}: plan the dataset again")
    missing = [k for k in _REQUIRED if k not in plan]
    if missing:
        raise ValueError(f"plan file {path} lacks fields {missing}: plan the dataset again")
    return plan


def plan_dataset(
    dataset_dir: str | Path,
    out: str | Path | None = "plan.json",
    gpu_memory_gb: float = GPU_MEMORY_GB,
    cpu_memory_gb: float = CPU_MEMORY_GB,
    max_cases: int = 50,
    voxels_per_case: int = 10_000,
    seed: int = 1234,
    progress: bool = True,
) -> dict[str, Any]:
    """Read ``dataset_dir``, extract its fingerprint, make its plan and write it to ``out`` (unless ``None``)."""
    dataset = read_user_dataset(dataset_dir)
    fingerprint = extract_fingerprint(dataset, max_cases, voxels_per_case, seed, progress)
    plan = make_plan(dataset, fingerprint, gpu_memory_gb, cpu_memory_gb)
    if out is not None:
        write_plan(plan, out)
    return plan


def ensure_plan(plan_file: str | Path, dataset_dir: str | Path, create: bool = True) -> dict[str, Any]:
    """The plan at ``plan_file`` for ``dataset_dir``; with ``create``, planned and written first if it is missing.

    Training creates it; evaluation and inference (``create=False``) need the plan the model was trained with.

    Raises:
        FileNotFoundError: no plan file and ``create`` is false.
        ValueError: ``plan_file`` holds the plan of another dataset folder (both are named).
    """
    plan_file, dataset_dir = Path(plan_file), Path(dataset_dir)
    if not plan_file.is_file() and not create:
        raise FileNotFoundError(
            f"no plan file {plan_file}: evaluation and inference need the plan the model was trained with "
            "(training writes it to <bundle_root>/plan.json; pass plan_file=... if it lies elsewhere)"
        )
    if not plan_file.is_file():
        logger.info("no plan at %s: planning %s", plan_file, dataset_dir)
        plan = plan_dataset(dataset_dir, plan_file, progress=False)
        logger.info("%s", plan_summary(plan))
        return plan
    plan = load_plan(plan_file)
    planned = Path(plan["dataset"]["root"])
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset folder does not exist: {dataset_dir}")
    if planned.resolve() != dataset_dir.resolve():
        raise ValueError(
            f"plan file {plan_file} was made for dataset {planned}, not {dataset_dir}: pass the plan of this dataset "
            f"(plan_file=...), or delete {plan_file} to plan {dataset_dir} again"
        )
    return plan


def _fmt(values: Sequence[float], digits: int = 2) -> str:
    texts = [f"{v:.{digits}f}" for v in values]
    return " × ".join(t.rstrip("0").rstrip(".") if "." in t else t for t in texts)


def plan_summary(plan: Mapping[str, Any]) -> str:
    """A human summary of a plan: dataset, fingerprint, normalisation, spacing, and both configurations."""
    data, fingerprint = plan["dataset"], plan["fingerprint"]
    spacings = np.asarray(fingerprint["spacings"])
    lines = [
        f"{data['name']} ({data['layout']} layout, {data['root']}): {data['num_training']} training cases, "
        f"{data['num_test']} test cases ({data['num_labelled_test']} labelled), files {data['file_ending']}",
        f"classes ({plan['num_classes']}): "
        + ", ".join(
            f"{v} {n} ({100 * fingerprint['class_fraction'].get(v, 0):.2f}% of voxels)"
            for v, n in plan["labels"].items()
        )
        + (f"; ignore label {plan['ignore_label']}" if plan.get("ignore_label") is not None else ""),
        f"spacing (mm, {plan['orientation']} axes): median {_fmt(np.median(spacings, axis=0))}, "
        f"range {_fmt(spacings.min(axis=0))} to {_fmt(spacings.max(axis=0))}",
        f"target spacing {_fmt(plan['target_spacing'], 3)} mm"
        + (" (anisotropic: coarse axis from the 10th percentile)" if plan["anisotropic"] else " (median)")
        + f"; median image {_fmt(plan['median_shape'], 0)} voxels at that spacing"
        + (f"; 2D data (axis {plan['squeeze_axis']} is one voxel)" if plan.get("squeeze_axis") is not None else ""),
        f"fingerprint: intensities and classes from {len(fingerprint['sampled_cases'])} of {fingerprint['num_cases']} "
        f"cases, {fingerprint['voxels_per_case']} foreground voxels each; the non-zero region keeps "
        f"{100 * fingerprint['median_relative_size_after_crop']:.0f}% of an image (median)",
    ]
    for channel, stats in zip(plan["channels"], fingerprint["intensity"], strict=True):
        how = {
            "ct": "clip to [{:.1f}, {:.1f}], then z-score with dataset mean {:.1f}, std {:.1f}".format(
                *channel.get("clip", [0, 0]), channel.get("mean", 0), channel.get("std", 0)
            ),
            "zscore": "z-score per image" + (" (non-zero voxels)" if channel["use_nonzero_mask"] else ""),
            "noNorm": "no normalisation",
            "rescale_to_0_1": "min-max to [0, 1] per image",
            "rgb_to_0_1": "divide by 255",
        }[channel["normalization"]]
        fg = "" if stats["mean"] is None else f" (foreground mean {stats['mean']:.4g}, std {stats['std']:.4g})"
        lines.append(f"channel {channel['index']} {channel['name']}: {how}{fg}")
    for name, config in plan["configurations"].items():
        lines.append(
            f"{name}: patch {_fmt(config['patch_size'], 0)}, batch {config['batch_size']}, "
            f"{len(config['filters'])} stages ({'-'.join(map(str, config['filters']))} features), "
            f"estimated {config['estimated_memory_gb']:.2f} of {config['memory_budget_gb']:g} GB"
        )
    return "\n".join(lines)
