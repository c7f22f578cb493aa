"""MONAI transform chains for a user dataset, configured by its plan (:mod:`medseg.planning`), after nnU-Net.

Per case: load the channel files into one channel-first image (:class:`LoadCased`), check the label's grid
(:class:`~medseg.data.loading.CheckAlignedd`) and values (``labels`` of dataset.json), orient, crop to the non-zero
region of the image (nnU-Net's crop), normalise each channel as the plan says (:class:`NormalizePland`), resample to
the plan's target spacing, and for training pad, sample patches (one in three centred on foreground, as nnU-Net) and
augment. Inference inverts the spatial steps and writes each prediction in the geometry of the case's first channel
file, named ``<case><file_ending>`` as nnU-Net names its predictions (:class:`SavePredictiond`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensity,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensity,
    ScaleIntensityRange,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
)

from .augment import NnUNetAugmentd
from .image_files import load_image, read_geometry, write_label_map
from .loading import GRID_TOLERANCE, CheckAlignedd, MapLabelsd, _largest_voxel_shift, output_keys

__all__ = [
    "NORMALIZATION_SCHEMES",
    "CheckLabelValuesd",
    "DropIgnoredd",
    "LoadCased",
    "NormalizePland",
    "SavePredictiond",
    "UnsqueezeAxisd",
    "nonzero",
    "user_transforms",
]

#: nnU-Net's normalisation schemes, chosen from a channel's name (anything else: ``zscore``).
NORMALIZATION_SCHEMES = ("ct", "zscore", "noNorm", "rescale_to_0_1", "rgb_to_0_1")


def nonzero(image: torch.Tensor) -> torch.Tensor:
    """Voxels that are not exactly zero: nnU-Net crops every case to the box around them (all channels)."""
    return image != 0


class LoadCased(MapTransform):
    """Load a case's channel files (``data[key]``: a list of paths) into one ``(C, *spatial)`` MetaTensor.

    Files are read with :func:`~medseg.data.image_files.load_image` (any format nnU-Net accepts; a 4D NIfTI or an
    RGB PNG gives several channels) and concatenated in list order. The metadata (affine, file name) is the first
    file's. Every channel file must lie on the first one's grid, by the rule of
    :class:`~medseg.data.loading.CheckAlignedd`; a single path (a label) loads as one file.

    Raises:
        ValueError: the files hold another number of channels than ``num_channels``, or a channel file lies on
            another grid; the message names the files.
    """

    def __init__(self, keys: KeysCollection, num_channels: int | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.num_channels = num_channels

    def load(self, paths: str | Sequence[str]) -> MetaTensor:
        """The files ``paths`` as one channel-first MetaTensor."""
        files = [paths] if isinstance(paths, str | Path) else list(paths)
        parts = [load_image(p) for p in files]
        first = parts[0]
        for path, part in zip(files[1:], parts[1:], strict=True):
            shapes = tuple(first.shape[1:]), tuple(part.shape[1:])
            if shapes[0] != shapes[1]:
                raise ValueError(f"channel file {path} has shape {shapes[1]}, but {files[0]} has {shapes[0]}")
            shift = _largest_voxel_shift(np.asarray(first.affine), np.asarray(part.affine), shapes[0])
            if shift > GRID_TOLERANCE * float(np.linalg.norm(np.asarray(first.affine)[:-1, :-1], axis=0).min()):
                raise ValueError(f"channel file {path} lies {shift:.4g} mm off the grid of {files[0]}")
        if self.num_channels is not None and sum(p.shape[0] for p in parts) != self.num_channels:
            raise ValueError(
                f"files {files} hold {sum(p.shape[0] for p in parts)} channel(s), but the dataset lists "
                f"{self.num_channels} (channel_names / modality of dataset.json)"
            )
        if len(parts) == 1:
            return first
        data = torch.cat([p.as_tensor() for p in parts])
        return MetaTensor(data, meta=dict(first.meta))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.load(d[key])
        return d


class CheckLabelValuesd(MapTransform):
    """Refuse label values outside the dataset's ``labels`` (plus its ``ignore`` label), naming the file and field."""

    def __init__(self, keys: KeysCollection, values: Sequence[int], source: str = "dataset.json") -> None:
        super().__init__(keys)
        self.checker = MapLabelsd(keys, {v: v for v in values}, values)
        self.source = source

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        try:
            return self.checker(data)
        except ValueError as err:
            raise ValueError(f"{err}: values outside field 'labels' of {self.source}") from err


class NormalizePland(MapTransform):
    """Normalise each channel of ``keys`` by its plan entry, as nnU-Net's schemes, with MONAI's intensity transforms.

    ``ct``: clip to the training set's foreground ``[percentile_00_5, percentile_99_5]``, then subtract the foreground
    mean and divide by the foreground std (:class:`~monai.transforms.ScaleIntensityRange` from the clip range onto
    its z-scores, which is the same linear map). ``zscore``: per image, :class:`~monai.transforms.NormalizeIntensity`
    (over non-zero voxels only when ``use_nonzero_mask``: nnU-Net's choice when cropping to the non-zero region
    removed a quarter or more of the image). ``rescale_to_0_1``: min–max to [0, 1]. ``rgb_to_0_1``: divide by 255.
    ``noNorm``: unchanged.

    Args:
        keys: image keys ``(C, *spatial)``.
        channels: the plan's ``channels`` list: per channel ``normalization`` and, for ``ct``, ``clip``
            ``[low, high]``, ``mean`` and ``std``; ``use_nonzero_mask`` for ``zscore``.
    """

    def __init__(self, keys: KeysCollection, channels: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(keys)
        self.steps = [self._step(c) for c in channels]

    @staticmethod
    def _step(channel: Mapping[str, Any]):
        scheme = channel["normalization"]
        if scheme == "ct":
            (low, high), mean, std = channel["clip"], channel["mean"], max(channel["std"], 1e-8)
            return ScaleIntensityRange(low, high, (low - mean) / std, (high - mean) / std, clip=True)
        if scheme == "zscore":
            return NormalizeIntensity(nonzero=bool(channel.get("use_nonzero_mask", False)))
        if scheme == "rescale_to_0_1":
            return ScaleIntensity(minv=0.0, maxv=1.0)
        if scheme == "rgb_to_0_1":
            return ScaleIntensityRange(0.0, 255.0, 0.0, 1.0)
        if scheme == "noNorm":
            return None
        raise ValueError(f"unknown normalization {scheme!r}; known: {', '.join(NORMALIZATION_SCHEMES)}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != len(self.steps):
                raise ValueError(f"image has {image.shape[0]} channels, the plan normalises {len(self.steps)}")
            out = image.clone()
            for index, step in enumerate(self.steps):
                if step is not None:
                    out[index] = step(image[index : index + 1].float())[0]
            d[key] = out
        return d


class UnsqueezeAxisd(MapTransform):
    """Put back the singleton spatial ``axis`` that ``SqueezeDimd`` removed (2D data stored as x × y × 1 volumes),
    before ``Invertd`` undoes the spatial steps in 3D. ``axis=None`` does nothing."""

    def __init__(self, keys: KeysCollection, axis: int | None) -> None:
        super().__init__(keys)
        self.axis = axis

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.axis is None:
            return d
        for key in self.key_iterator(d):
            d[key] = d[key].unsqueeze(self.axis + 1)
        return d


class DropIgnoredd(MapTransform):
    """Set prediction and label to background where the label holds the ``ignore`` value (nnU-Net's unannotated
    voxels), so that foreground Dice counts annotated voxels only. Label maps, not one-hot. ``None``: no-op."""

    def __init__(self, pred_key: str, label_key: str, ignore_value: int | None) -> None:
        super().__init__([pred_key, label_key])
        self.pred_key, self.label_key, self.ignore_value = pred_key, label_key, ignore_value

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.ignore_value is None or self.label_key not in d:
            return d
        ignored = d[self.label_key] == self.ignore_value
        d[self.pred_key] = torch.where(ignored, torch.zeros_like(d[self.pred_key]), d[self.pred_key])
        d[self.label_key] = torch.where(ignored, torch.zeros_like(d[self.label_key]), d[self.label_key])
        return d


class SavePredictiond(MapTransform):
    """Write ``data[key]`` (a ``(1, *spatial)`` label map brought back to the input's grid by ``Invertd``) to
    ``<output_dir>/<name><file_ending>`` in the geometry of ``data[reference_key]`` (the case's first channel file).

    Raises:
        ValueError: the prediction's affine or shape is not the reference's (it was not inverted to the input grid).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        file_ending: str,
        name_key: str = "name",
        reference_key: str = "reference",
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.file_ending = Path(output_dir), file_ending
        self.name_key, self.reference_key = name_key, reference_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = Path(d[self.reference_key])
        out = self.output_dir / f"{d[self.name_key]}{self.file_ending}"
        for key in self.key_iterator(d):
            pred = d[key]
            if isinstance(pred, MetaTensor):
                geometry = read_geometry(reference)
                affine = np.asarray(pred.affine, dtype=np.float64)
                spatial = tuple(pred.shape[1:])
                if affine.shape == geometry.affine.shape and spatial == geometry.shape:
                    shift = _largest_voxel_shift(geometry.affine, affine, spatial)
                    if shift > GRID_TOLERANCE * min(geometry.spacing) + 1e-4:
                        raise ValueError(
                            f"prediction for {out.name} lies {shift:.3g} mm off the grid of {reference}: "
                            "the spatial preprocessing was not inverted"
                        )
            labels = np.asarray(pred.detach().cpu())[0] if hasattr(pred, "detach") else np.asarray(pred)[0]
            write_label_map(np.rint(labels).astype(np.int64), reference, out)
        return d


def user_transforms(
    plan: Mapping[str, Any],
    train: bool,
    roi_size: Sequence[int] | None = None,
    num_samples: int = 2,
    augmentation: str = "nnunet",
    aux_transforms: Sequence[Any] = (),
    label: bool = True,
) -> Compose:
    """The MONAI transform chain of a planned user dataset (``plan``: :func:`medseg.planning.load_plan`).

    Deterministic part: :class:`LoadCased`, label checks, ``Orientationd`` (the plan's ``orientation``),
    ``CropForegroundd`` on non-zero voxels, :class:`NormalizePland`, ``Spacingd`` to ``target_spacing`` (bilinear
    image, nearest label) and ``SqueezeDimd`` for 2D data stored with a singleton axis. With ``train``: pad to
    ``roi_size``, ``aux_transforms`` (e.g. ``DistanceMapd``, cached by ``CacheDataset``), ``num_samples`` patches
    (``RandCropByPosNegLabeld``, pos 1 : neg 2 as nnU-Net's one-in-three foreground oversampling) and
    augmentation: ``"nnunet"`` (:class:`~medseg.data.augment.NnUNetAugmentd`), ``"monai"`` (flips, 90° turns in
    square planes, intensity scale and shift) or ``"none"``. ``label=False`` builds the inference chain (image only,
    metadata kept for ``Invertd``).
    """
    keys = ["image", "label"] if label else ["image"]
    dims = len(plan["target_spacing"])
    chain: list[Any] = [LoadCased("image", num_channels=len(plan["channels"]))]
    if label:
        chain += [
            LoadCased("label"),
            CheckAlignedd("label", reference_key="image"),
            CheckLabelValuesd("label", plan["label_values"], plan["dataset"]["dataset_json"]),
        ]
    chain += [
        Orientationd(keys, axcodes=plan["orientation"], labels=None),
        CropForegroundd(keys, source_key="image", select_fn=nonzero, allow_smaller=True),
        NormalizePland("image", plan["channels"]),
        Spacingd(keys, pixdim=tuple(plan["target_spacing"]), mode=("bilinear", "nearest")[: len(keys)]),
    ]
    if plan.get("squeeze_axis") is not None:
        chain.append(SqueezeDimd(keys, dim=int(plan["squeeze_axis"]) + 1))
        dims -= 1
    if not train:
        chain.append(EnsureTyped(keys, track_meta=not label))
        return Compose(chain)
    if roi_size is None or len(roi_size) != dims:
        raise ValueError(f"training needs a roi_size of {dims} values (the plan's patch_size), got {roi_size}")
    aux_keys = [k for t in aux_transforms for k in output_keys(t)]
    chain += [SpatialPadd(keys, spatial_size=tuple(roi_size)), *aux_transforms]
    keys = keys + aux_keys
    chain.append(
        RandCropByPosNegLabeld(
            keys, label_key="label", spatial_size=tuple(roi_size), pos=1, neg=2, num_samples=num_samples
        )
    )
    if augmentation == "nnunet":
        chain.append(NnUNetAugmentd(image_keys=["image"], label_keys=["label"], distance_keys=aux_keys))
    elif augmentation == "monai":
        chain += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(dims)]
        if roi_size[0] == roi_size[1]:
            chain.append(RandRotate90d(keys, prob=0.2, max_k=3, spatial_axes=(0, 1)))
        chain += [RandScaleIntensityd("image", factors=0.1, prob=0.3), RandShiftIntensityd("image", 0.1, prob=0.3)]
    elif augmentation != "none":
        raise ValueError(f"augmentation must be 'nnunet', 'monai' or 'none', got {augmentation!r}")
    chain.append(EnsureTyped(keys, track_meta=False))
    return Compose(chain)
