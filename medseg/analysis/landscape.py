r"""Loss behaviour along a drifting prediction: the set-up of Figure 3 of Azad et al.'s survey, for any loss.

The survey (Azad, Heidari et al., "Loss Functions in the Era of Semantic Segmentation", 2023, Figure 3) moves a
prediction off a large and off a small object, so that the overlap falls and false positives and false negatives
grow together, and asks whether each loss rises monotonically. Here:

- the target is a disc (2D) or a ball (3D) of radius r; the predictions are the same shape shifted by
  0, ..., 2r + 1 voxels along the last axis (integer shifts, so every prediction has the target's area); the
  overlap is the Dice of the predicted and target masks, :math:`2|A \cap B| / (|A| + |B|)`, from 1 to 0;
- a prediction is a pair of confident logits, background 0 and object :math:`\pm L` (so
  :math:`p_{object} = \sigma(\pm L)`), optionally blurred by a Gaussian of width ``soften`` voxels;
- every loss is built from its registry entry (the class :func:`medseg.losses.get_loss` builds) with its
  defaults, ``softmax=True`` (or ``use_softmax=True``) where it takes one and the arguments of :data:`EXTRA_KWARGS`;
  the maps it reads from ``aux`` come from :func:`medseg.transforms.distance_maps` of the target, in the mode the
  loss declares (``map_mode``) or :data:`MAP_MODES` gives; the value and the gradient norm
  :math:`\lVert \partial L / \partial z \rVert_2` over all logits z are recorded per prediction, in float64;
- a loss is *monotone* on an object when its value never falls as the overlap falls (:func:`is_monotone`).

A loss that needs more than a distance map of the target (network features, a trained checkpoint) is *skipped*,
with the reason; a loss that raises or returns a non-finite value on this set-up is *failed*, with the error: both
are rows of the summary, never a crash.
"""

from __future__ import annotations

import argparse
import inspect
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from medseg.losses import LossInfo, list_losses, loss_info
from medseg.transforms import distance_maps

__all__ = [
    "BIN_LAYOUT_LOSSES",
    "EXTRA_KWARGS",
    "MAP_MODES",
    "DriftSequence",
    "Exploration",
    "LossSetup",
    "Unsupported",
    "build_parser",
    "distance_bin_logits",
    "drift_sequence",
    "evaluate_loss",
    "explore",
    "is_monotone",
    "loss_setup",
    "main",
    "prediction_logits",
    "write_outputs",
]

#: a value may fall by this fraction of the largest |value| of its curve and still count as not falling (float64
#: sums of a few thousand terms wobble by ~1e-13 of their magnitude)
MONOTONE_RTOL = 1e-9

#: arguments a loss needs on this two-class (background, object) problem beyond its defaults
EXTRA_KWARGS: dict[str, dict] = {
    # GWDL has no default class distance matrix: background and object one unit apart (the largest distance)
    "gwdl": {"dist_matrix": [[0.0, 1.0], [1.0, 0.0]]},
}

#: DistanceMap mode of the aux map of losses that do not declare a ``map_mode`` attribute
MAP_MODES: dict[str, str] = {"dpce": "penalty", "boundary_aware": "quantized"}

#: losses whose input is Hayder's layout of K distance-bin logits per class (``num_bins``, ``truncation``
#: attributes), not class logits: their prediction is the drifting mask's own bins (:func:`distance_bin_logits`)
BIN_LAYOUT_LOSSES = ("boundary_aware",)

#: aux keys a distance map of the target can fill
MAP_KEYS = ("dist", "weight")


class Unsupported(Exception):
    """The loss cannot run on a synthetic prediction by design (it needs network features or a checkpoint)."""


@dataclass(frozen=True)
class DriftSequence:
    """A target object and the predictions drifting off it.

    Attributes:
        name: the object's name (``large``, ``small``).
        radius: its radius in voxels.
        labels: the target label map ``(1, 1, *spatial)``, int64, 1 on the object.
        masks: the predicted masks ``(S, *spatial)``, bool, the target shape shifted by ``shifts``.
        shifts: shift of each prediction along the last axis, in voxels, increasing from 0 to 2r + 1.
        overlaps: Dice overlap of each predicted mask with the target, decreasing from 1 to 0.
    """

    name: str
    radius: int
    labels: torch.Tensor
    masks: torch.Tensor
    shifts: tuple[int, ...]
    overlaps: tuple[float, ...]


@dataclass(frozen=True)
class LossSetup:
    """How a loss is built and fed here: constructor ``kwargs``, the DistanceMap mode of each aux key, and whether
    its input is the distance-bin layout of :data:`BIN_LAYOUT_LOSSES` rather than class logits."""

    kwargs: dict
    map_modes: dict[str, str]
    bin_layout: bool = False


@dataclass(frozen=True)
class Exploration:
    """The explorer's results.

    Attributes:
        curves: one row per loss, object and prediction: ``loss, family, object, radius, shift, overlap, value,
            grad_norm``.
        summary: one row per loss: ``loss, family, status`` (``ok``, ``skipped``, ``failed``), ``monotone_<object>``
            (``None`` where not evaluated), ``<object>_min``, ``<object>_max`` (value range) and ``note`` (why a loss
            was skipped or failed).
    """

    curves: pd.DataFrame
    summary: pd.DataFrame


def _ball(size: int, dims: int, centre: Sequence[int], radius: int) -> torch.Tensor:
    """Voxels whose centre lies within ``radius`` of ``centre``: a bool ``(size,) * dims`` mask."""
    axes = torch.meshgrid(*(torch.arange(size) for _ in range(dims)), indexing="ij")
    squared = sum((axis - c) ** 2 for axis, c in zip(axes, centre, strict=True))
    return squared <= radius**2


def drift_sequence(name: str, radius: int, size: int, dims: int = 2, steps: int = 16) -> DriftSequence:
    """A disc (``dims=2``) or ball (``dims=3``) of ``radius`` and up to ``steps`` predictions drifting off it.

    The shifts are ``steps`` values spread evenly over ``0 .. 2r + 1`` (the first shift with no overlap), rounded
    to whole voxels; repeats are dropped, so a small object gets at most 2r + 2 predictions. The target sits so that
    target and farthest prediction are centred together along the last axis, and centred along the others.

    Raises:
        ValueError: for ``dims`` not 2 or 3, a radius below 1, fewer than 2 steps, or a patch too small to hold the
            target and its farthest shift (``size < 4r + 2``).
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if radius < 1:
        raise ValueError(f"radius must be at least 1 voxel, got {radius}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (overlap 1 and overlap 0), got {steps}")
    last_shift = 2 * radius + 1
    if size < 2 * last_shift:
        raise ValueError(
            f"a patch of {size} voxels cannot hold an object of radius {radius} and its shift by {last_shift}: "
            f"use size >= {2 * last_shift} or a smaller radius"
        )
    centre = [size // 2] * dims
    centre[-1] = (size - 2 * last_shift) // 2 + radius
    target = _ball(size, dims, centre, radius)
    shifts = tuple(sorted({round(float(s)) for s in np.linspace(0, last_shift, steps)}))
    masks = torch.stack([_ball(size, dims, [*centre[:-1], centre[-1] + s], radius) for s in shifts])
    intersections = (masks & target).flatten(1).sum(1).double()
    areas = masks.flatten(1).sum(1).double() + target.sum()
    overlaps = tuple((2 * intersections / areas).tolist())
    labels = target.long()[None, None]
    return DriftSequence(name, radius, labels, masks, shifts, overlaps)


def _check_logit_and_soften(logit: float, soften: float) -> None:
    if not logit > 0:
        raise ValueError(f"logit must be positive (the object logit inside the mask), got {logit}")
    if not soften >= 0:
        raise ValueError(f"soften must be a non-negative Gaussian width in voxels, got {soften}")


def _confident(indicator: torch.Tensor, logit: float, soften: float) -> torch.Tensor:
    """``+logit`` where the ``(1, channels, *spatial)`` ``indicator`` is set, ``-logit`` elsewhere (float64), each
    channel blurred over the spatial axes by a Gaussian of width ``soften`` voxels."""
    _check_logit_and_soften(logit, soften)
    logits = logit * (2.0 * indicator.double() - 1.0)
    if soften > 0:
        sigma = (0.0, 0.0) + (soften,) * (indicator.ndim - 2)
        logits = torch.from_numpy(ndimage.gaussian_filter(logits.numpy(), sigma, mode="nearest"))
    return logits


def prediction_logits(mask: torch.Tensor, logit: float = 4.0, soften: float = 0.0) -> torch.Tensor:
    r"""Two-class logits ``(1, 2, *spatial)`` float64 of a predicted mask: background 0, object :math:`\pm` ``logit``.

    The softmax gives the object :math:`\sigma(\text{logit})` inside the mask and :math:`\sigma(-\text{logit})`
    outside; ``soften > 0`` blurs the object logits with a Gaussian of that width (voxels), so that the probability
    ramps through 0.5 across the mask's edge instead of jumping.
    """
    object_logits = _confident(mask[None, None], logit, soften)
    return torch.cat([torch.zeros_like(object_logits), object_logits], 1)


def distance_bin_logits(
    mask: torch.Tensor, logit: float = 4.0, soften: float = 0.0, bins: int = 5, truncation: float = 5.0
) -> torch.Tensor:
    r"""Boundary-aware logits ``(1, 2·K, *spatial)`` of a predicted mask: the prediction a perfect network would
    make for that mask in Hayder's layout (channel ``c·K + k − 1``: class c in distance bin k).

    Per class (background, object) and bin k: :math:`+` ``logit`` where the mask's own quantised distance map
    (:func:`medseg.transforms.distance_maps`, mode ``quantized``, ``bins``, ``truncation``) equals k, :math:`-`
    ``logit`` elsewhere; ``soften`` blurs each channel as in :func:`prediction_logits`.
    """
    onehot = torch.stack([~mask, mask])[None].float()
    levels = distance_maps(onehot, "quantized", bins=bins, truncation=truncation)
    bin_index = torch.arange(1, bins + 1).view(1, 1, bins, *([1] * mask.ndim))
    in_bin = levels.unsqueeze(2) == bin_index
    return _confident(in_bin.flatten(1, 2), logit, soften)


def is_monotone(values: Sequence[float], rtol: float = MONOTONE_RTOL) -> bool:
    """Whether ``values`` (ordered by falling overlap) never fall, by more than ``rtol`` of their largest magnitude.

    A loss that stays flat (e.g. Dice once the overlap is 0) is monotone; one that falls anywhere is not.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size < 2:
        raise ValueError(f"values must be a 1-D sequence of at least 2 numbers, got shape {array.shape}")
    tolerance = rtol * float(np.abs(array).max())
    return bool(np.all(np.diff(array) >= -tolerance))


def loss_setup(info: LossInfo) -> LossSetup:
    """Constructor arguments and aux map modes for ``info``'s loss on this set-up.

    ``softmax=True`` where the constructor takes ``softmax`` (the region losses' default is no activation) and
    ``use_softmax=True`` where it takes that (MONAI's focal flag, whose default is the sigmoid), plus
    :data:`EXTRA_KWARGS`; each aux key must be a map key (``dist``, ``weight``) with a mode from the class's
    ``map_mode`` or :data:`MAP_MODES`.

    Raises:
        Unsupported: for a constructor argument without default that :data:`EXTRA_KWARGS` does not give (e.g. a
            trained network's checkpoint), an aux key no distance map of the target provides (e.g. ``features``),
            or a map key with no known mode.
    """
    parameters = inspect.signature(info.cls.__init__).parameters
    kwargs = {flag: True for flag in ("softmax", "use_softmax") if flag in parameters}
    kwargs |= EXTRA_KWARGS.get(info.name, {})
    required = [
        name
        for name, parameter in list(parameters.items())[1:]
        if parameter.default is parameter.empty
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        and name not in kwargs
    ]
    if required:
        raise Unsupported(f"needs {', '.join(map(repr, required))} (no default; e.g. a trained network's checkpoint)")
    map_modes = {}
    for key in info.aux_keys:
        if key not in MAP_KEYS:
            raise Unsupported(f"reads aux {key!r}, which no distance map of the target provides")
        mode = getattr(info.cls, "map_mode", None) or MAP_MODES.get(info.name)
        if mode is None:
            raise Unsupported(f"reads aux {key!r} but declares no map_mode (and none is listed in MAP_MODES)")
        map_modes[key] = mode
    return LossSetup(kwargs, map_modes, info.name in BIN_LAYOUT_LOSSES)


def evaluate_loss(loss: nn.Module, setup: LossSetup, sequence: DriftSequence, logit: float, soften: float) -> list:
    """Value and gradient norm (w.r.t. all logits) of ``loss`` on each prediction: ``[(value, grad_norm), ...]``.

    Raises:
        ValueError: the loss returns more than one number.
        FloatingPointError: a value or gradient is not finite.
        Any error the loss raises.
    """
    onehot = torch.cat([1 - sequence.labels, sequence.labels], 1).float()
    aux = {key: distance_maps(onehot, mode) for key, mode in setup.map_modes.items()}
    results = []
    for mask, overlap in zip(sequence.masks, sequence.overlaps, strict=True):
        if setup.bin_layout:
            logits = distance_bin_logits(mask, logit, soften, loss.num_bins, loss.truncation)
        else:
            logits = prediction_logits(mask, logit, soften)
        logits.requires_grad_(True)
        value = loss(logits, sequence.labels, **aux)
        if value.numel() != 1:
            raise ValueError(f"returned shape {tuple(value.shape)} with the default reduction, not one number")
        (grad,) = torch.autograd.grad(value.sum(), logits)
        number, grad_norm = float(value.detach()), float(torch.linalg.vector_norm(grad))
        if not (np.isfinite(number) and np.isfinite(grad_norm)):
            raise FloatingPointError(f"value {number}, gradient norm {grad_norm} at overlap {overlap:.3f}")
        results.append((number, grad_norm))
    return results


def _run_loss(
    info: LossInfo, sequences: Sequence[DriftSequence], logit: float, soften: float
) -> tuple[str, list[str], list[pd.DataFrame]]:
    """Evaluate one loss on every sequence: ``(status, notes, curve frames)``; errors become notes, not raises."""
    try:
        setup = loss_setup(info)
        loss = info.cls(**setup.kwargs)
    except Unsupported as error:
        return "skipped", [str(error)], []
    except Exception as error:
        return "failed", [f"construction: {type(error).__name__}: {error}"], []
    status, notes, frames = "ok", [], []
    for sequence in sequences:
        try:
            results = evaluate_loss(loss, setup, sequence, logit, soften)
        except Exception as error:
            status = "failed"
            notes.append(f"{sequence.name}: {type(error).__name__}: {error}")
            continue
        values, grad_norms = zip(*results, strict=True)
        frame = pd.DataFrame(
            {"shift": sequence.shifts, "overlap": sequence.overlaps, "value": values, "grad_norm": grad_norms}
        )
        frames.append(frame.assign(loss=info.name, family=info.family, object=sequence.name, radius=sequence.radius))
    return status, notes, frames


def _summary_row(info: LossInfo, sequences: Sequence[DriftSequence], frames: list[pd.DataFrame]) -> dict:
    row: dict = {"loss": info.name, "family": info.family}
    evaluated = {frame.object.iloc[0]: frame.value.to_numpy() for frame in frames}
    for sequence in sequences:
        values = evaluated.get(sequence.name)
        row[f"monotone_{sequence.name}"] = None if values is None else is_monotone(values)
        row[f"{sequence.name}_min"] = np.nan if values is None else float(values.min())
        row[f"{sequence.name}_max"] = np.nan if values is None else float(values.max())
    return row


CURVE_COLUMNS = ["loss", "family", "object", "radius", "shift", "overlap", "value", "grad_norm"]


def explore(
    losses: Sequence[str | LossInfo] | None = None,
    size: int | None = None,
    dims: int = 2,
    steps: int = 16,
    radii: tuple[int, int] | None = None,
    logit: float = 4.0,
    soften: float = 0.0,
    progress: bool = True,
) -> Exploration:
    r"""Evaluate each loss on predictions drifting off a large and a small object: curves and per-loss summary.

    Args:
        losses: registered names or registry entries (:class:`~medseg.losses.LossInfo`); default: every registered
            loss.
        size: patch edge in voxels (default 96 in 2D, 32 in 3D).
        dims: 2 (discs) or 3 (balls).
        steps: predictions per object (fewer for a small object: see :func:`drift_sequence`).
        radii: the large and the small object's radius (default ``size // 5`` and ``max(2, size // 24)``).
        logit: the object logit magnitude L (default 4: :math:`\sigma(4) = 0.982`).
        soften: Gaussian blur of the logits in voxels (default 0: sharp).
        progress: show a tqdm bar.

    Raises:
        ValueError: for an unknown loss name, a non-positive ``logit``, a negative ``soften``, or sizes
            :func:`drift_sequence` rejects. A loss that fails on this set-up is a summary row, not an error.
    """
    _check_logit_and_soften(logit, soften)
    size = size or (96 if dims == 2 else 32)
    large, small = radii or (size // 5, max(2, size // 24))
    sequences = [drift_sequence("large", large, size, dims, steps), drift_sequence("small", small, size, dims, steps)]
    infos = [entry if isinstance(entry, LossInfo) else loss_info(entry) for entry in (losses or list_losses())]
    curve_frames, summary_rows = [], []
    for info in tqdm(infos, desc="losses", disable=not progress):
        status, notes, frames = _run_loss(info, sequences, logit, soften)
        summary_rows.append({**_summary_row(info, sequences, frames), "status": status, "note": "; ".join(notes)})
        curve_frames.extend(frames)
    curves = (
        pd.concat(curve_frames, ignore_index=True)[CURVE_COLUMNS]
        if curve_frames
        else pd.DataFrame(columns=CURVE_COLUMNS)
    )
    summary = pd.DataFrame(summary_rows)
    monotone = [column for column in summary.columns if column.startswith("monotone_")]
    ranges = [column for column in summary.columns if column.endswith(("_min", "_max"))]
    return Exploration(curves, summary[["loss", "family", "status", *monotone, *ranges, "note"]])


def _line_styles(names: Sequence[str]) -> dict[str, dict]:
    """A distinct colour and dash per loss: tab20's colours solid, then dashed, then dotted."""
    palette = matplotlib.colormaps["tab20"]
    dashes = ("-", "--", ":")
    return {name: {"color": palette(i % 20), "linestyle": dashes[i // 20 % 3]} for i, name in enumerate(names)}


def _normalised(values: pd.Series) -> pd.Series:
    """Min-max scaled to [0, 1] (a constant curve is 0), so curves of any scale share an axis."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else values * 0.0


def _save(figure: Figure, path: Path) -> None:
    """Render with Agg and store as a 256-colour PNG (a third of the RGBA size; line plots need no more colours)."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=72)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)


def plot_curves(curves: pd.DataFrame, column: str, path: Path) -> None:
    """One panel per object of ``column`` against the overlap (falling left to right), every loss a line.

    ``value`` is min-max normalised per loss and object (the shape is what monotonicity is about); ``grad_norm`` is
    drawn raw on a log axis.
    """
    objects = list(dict.fromkeys(curves.object))
    names = list(dict.fromkeys(curves.loss))
    styles = _line_styles(names)
    legend_rows = -(-len(names) // 6)
    figure = Figure(figsize=(11, 4.5 + 0.22 * legend_rows), layout="constrained")
    axes = figure.subplots(1, len(objects), squeeze=False, sharey=True)[0]
    for ax, object_name in zip(axes, objects, strict=True):
        for name in names:
            curve = curves[(curves.loss == name) & (curves.object == object_name)]
            if curve.empty:
                continue
            y = _normalised(curve.value) if column == "value" else curve.grad_norm.where(curve.grad_norm > 0)
            ax.plot(curve.overlap, y, label=name, linewidth=1.3, **styles[name])
        radius = int(curves.loc[curves.object == object_name, "radius"].iloc[0])
        ax.set_title(f"{object_name} object (radius {radius})")
        ax.set_xlim(1.02, -0.02)
        ax.set_xlabel("Dice overlap of prediction and target")
        ax.grid(alpha=0.3)
        if column == "grad_norm":
            ax.set_yscale("log")
    axes[0].set_ylabel("loss value, min-max normalised" if column == "value" else "‖∂loss/∂logits‖₂")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=6, fontsize=8, frameon=False)
    _save(figure, path)


def plot_value_grid(curves: pd.DataFrame, path: Path) -> None:
    """Small multiples: one panel per loss with its raw value on every object against the overlap."""
    names = list(dict.fromkeys(curves.loss))
    columns = min(6, len(names))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(2.3 * columns, 1.9 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for index, (object_name, curve) in enumerate(curves[curves.loss == name].groupby("object", sort=False)):
            dash = "-" if index == 0 else "--"
            ax.plot(curve.overlap, curve.value, dash, color="black", linewidth=1.1, label=object_name)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(1.02, -0.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncol=2, fontsize=9, frameon=False)
    figure.supxlabel("Dice overlap (falling to the right)", fontsize=9)
    _save(figure, path)


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary as a markdown table: monotone flags as yes/no, 4 significant digits, blanks where not evaluated."""
    table = summary.astype(object).where(summary.notna(), None)
    for column in table.columns:
        if column.startswith("monotone_"):
            table[column] = table[column].map(lambda flag: {True: "yes", False: "no"}.get(flag, ""))
    return table.to_markdown(index=False, floatfmt=".4g", missingval="")


def write_outputs(exploration: Exploration, out: str | Path) -> list[Path]:
    """Write ``curves.csv``, ``summary.csv``, ``summary.md`` and the PNG plots into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in ("curves.csv", "summary.csv", "summary.md")]
    exploration.curves.to_csv(paths[0], index=False)
    exploration.summary.to_csv(paths[1], index=False)
    paths[2].write_text(summary_markdown(exploration.summary) + "\n")
    if not exploration.curves.empty:
        plots = [out / name for name in ("loss_values.png", "loss_gradients.png", "loss_values_grid.png")]
        plot_curves(exploration.curves, "value", plots[0])
        plot_curves(exploration.curves, "grad_norm", plots[1])
        plot_value_grid(exploration.curves, plots[2])
        paths += plots
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loss_landscape.py",
        description="Value and gradient of each loss as a prediction drifts off a large and a small object "
        "(Azad et al. 2023, Figure 3); writes CSV and markdown tables and PNG plots.",
    )
    parser.add_argument("--losses", nargs="+", help="registered loss names (default: all)")
    parser.add_argument("--out", default="loss_landscape", help="output folder (default: ./loss_landscape)")
    parser.add_argument("--steps", type=int, default=16, help="predictions per object (default 16)")
    parser.add_argument("--size", type=int, help="patch edge in voxels (default 96 in 2D, 32 in 3D)")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2: discs, 3: balls (default 2)")
    parser.add_argument("--radii", type=int, nargs=2, metavar=("LARGE", "SMALL"), help="object radii in voxels")
    parser.add_argument("--logit", type=float, default=4.0, help="object logit magnitude L (default 4)")
    parser.add_argument("--soften", type=float, default=0.0, help="Gaussian blur of the logits, voxels (default 0)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: these small tensors run slower on a pool)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` (default ``sys.argv[1:]``), explore, write the outputs, print the summary."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    exploration = explore(
        args.losses, args.size, args.dims, args.steps, args.radii, args.logit, args.soften, progress=not args.quiet
    )
    paths = write_outputs(exploration, args.out)
    print(summary_markdown(exploration.summary))
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0
