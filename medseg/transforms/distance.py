"""Distance maps of segmentation labels: MONAI transforms for caching, and a batched function for losses.

:class:`DistanceMapd` (a thin :class:`~monai.transforms.MapTransform` over the array transform :class:`DistanceMap`)
writes a new key next to the label; it is deterministic, so ``CacheDataset`` computes it once per case.
:func:`distance_maps` computes the same maps for a one-hot batch, for losses whose batch carries no cached map.
The conventions of each mode, and what empty and full classes get, are in :class:`DistanceMap`'s docstring.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import ClassVar

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

from ._backends import get_backend
from ._maps import MODES, MapSettings, Spacing, check_binary, item_maps, masks_from_label, spacing_tuple
from ._record import MAP_META_KEY, map_record, sidecar_key

__all__ = ["MODES", "DistanceMap", "DistanceMapD", "DistanceMapDict", "DistanceMapd", "distance_maps"]


class DistanceMap(Transform):
    r"""Per-class distance (or weight) map of a channel-first label, in millimetres.

    Input: a label map ``(1, *spatial)`` with ``num_classes`` classes (``num_classes=1``: a binary mask whose value 1
    is the class), or a one-hot / multi-label ``(C, *spatial)`` label; 2D or 3D. Output: ``(C, *spatial)``
    (``(1, *spatial)`` for ``unet_weight``) of ``dtype``; a MetaTensor input passes its meta data (affine, applied
    operations) to the output, so MONAI's spatial transforms treat it like the label. A torch tensor gives a
    MetaTensor (while MONAI's ``get_track_meta()`` is on) whose ``meta["distance_map"]`` records the mode, the
    spacing used and the mode's parameters, which the losses check; a numpy array gives a numpy array (no record:
    :class:`DistanceMapd` keeps one in its sidecar key).

    Notation, per class c with mask g and known voxels (not ``ignore_index``): :math:`d_{in}(x)` is the distance from
    a voxel of g to the nearest known voxel outside g (one voxel step on the inner boundary layer), :math:`d_{out}(x)`
    the distance from a known voxel outside g to the nearest voxel of g. Ignored voxels bound no class (they are
    transparent to both distances) and get 0 in every mode. Spacing is the label's ``pixdim`` (MetaTensor affine)
    unless ``spacing`` is given, else 1 (voxel units). Modes:

    - ``signed`` (boundary loss; Kervadec et al., MIDL 2019 / MedIA 2021):
      :math:`\phi = d_{out}(1-g) - (d_{in} - s_{min})\,g`: negative inside, positive outside, 0 on the inner boundary
      layer. Kervadec subtracts one voxel (``EDT - 1``); in mm we subtract the finest spacing :math:`s_{min}` (the
      authors' code subtracts 1 whatever the spacing, which turns the inner layer positive below 1 mm). With
      anisotropic spacing, a layer voxel whose nearest outside voxel lies along a coarser axis a gets
      :math:`-(s_a - s_{min})`.
    - ``unsigned`` (Hausdorff DT loss; Karimi & Salcudean, IEEE TMI 2020): :math:`d_{in} g + d_{out}(1-g)`, the
      field of MONAI's ``HausdorffDTLoss.distance_field`` (which adds EDT(fg) and EDT(bg)), with spacing.
    - ``penalty`` (DPCE; Caliva et al., MIDL 2019): each side of the boundary inverted and max-normalised,
      :math:`\Phi = (\max d - d)/(\max d - \min d)` over the inside and over the outside separately: 1 on the layers
      next to the boundary, 0 on the farthest voxels; a side whose voxels all touch the boundary is 1.
    - ``rrw`` (region-wise loss; Valverde & Tohka, 2023): :math:`-d_{in}/\max d_{in}` inside, 1 outside.
    - ``quantized`` (boundary-aware; Hayder, He & Salzmann, CVPR 2017): inside, the bin
      :math:`\lceil \min(d_{in}, R)\,K/R \rceil \in \{1..K\}` of the truncated distance; outside 0. The loss reads the
      K binary maps as ``bin == k``; with 1 mm voxels and R = K this is Hayder's :math:`\min(\lceil d \rceil, R)`.
    - ``unet_weight`` (Ronneberger, Fischer & Brox, MICCAI 2015): one channel,
      :math:`w = w_c + w_0 \exp(-(d_1 + d_2)^2 / 2\sigma^2)`, :math:`d_1, d_2` the distances to the nearest and second
      nearest object (face-connected component of a class other than 0), in voxels of the finest spacing; the
      border term is added on background (class 0) voxels, the gaps it is meant to weigh. :math:`w_c`: inverse
      class frequency in the label, scaled so the most frequent class weighs 1 (``class_balance=False``: 1). Needs
      exclusive classes.

    Empty and full classes (no boundary in the patch): ``signed`` +diagonal (empty) / −diagonal (full), the patch
    diagonal :math:`\sqrt{\sum_a (n_a s_a)^2}` bounding every in-patch distance; ``unsigned`` 0 (MONAI's rule, so the
    Hausdorff loss keeps MONAI's numbers); ``penalty`` 0 (plain CE); ``rrw`` 1 / −1; ``quantized`` 0 / K;
    ``unet_weight``: fewer than two objects leave only :math:`w_c`.

    Args:
        mode: one of ``signed``, ``unsigned``, ``penalty``, ``rrw``, ``quantized``, ``unet_weight``.
        num_classes: classes of a label map (output channels); checked against a one-hot label's channels.
        spacing: voxel size in mm per spatial axis (array order), or one value; ``None``: from the MetaTensor.
        ignore_index: label value that takes no part; with a one-hot label, a channel index masks that channel's
            voxels and any other value masks voxels with no class (MONAI's rule, as in ``medseg.losses``).
        backend: ``auto`` (``edt`` on CPU, cuCIM on CUDA tensors when installed), ``edt``, ``scipy``, ``sitk``,
            ``cucim``.
        dtype: output dtype, ``torch.float32`` (default) or ``torch.float16`` to halve cached memory.
        truncation: R, in mm, for ``quantized`` (default 5). bins: K for ``quantized`` (default 5: one bin per mm,
            Hayder's integer distances at 1 mm spacing).
        w0, sigma: ``unet_weight``'s border weight and width in voxels (Ronneberger's 10 and 5).
        class_balance: ``unet_weight``'s :math:`w_c` from class frequencies (default) or 1.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        mode: str = "signed",
        num_classes: int | None = None,
        spacing: Spacing | None = None,
        ignore_index: int | None = None,
        backend: str = "auto",
        dtype: torch.dtype = torch.float32,
        truncation: float = 5.0,
        bins: int = 5,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_balance: bool = True,
    ) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.settings = MapSettings(
            mode, float(truncation), int(bins), float(w0), float(sigma), class_balance, backend, dtype
        )
        self.num_classes = num_classes
        self.spacing = spacing
        self.ignore_index = ignore_index

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        values = convert_to_tensor(label, track_meta=False)
        backend = get_backend(self.settings.backend, values.device)
        masks, known, index = masks_from_label(backend.xp, backend.asarray(values), self.num_classes, self.ignore_index)
        spacing = self.spacing_of(label)
        maps = item_maps(masks, known, spacing, self.settings, backend, index, self.num_classes)
        maps = backend.to_tensor(maps, values.device)
        out = convert_to_dst_type(maps, label, dtype=self.settings.dtype)[0]
        if isinstance(label, torch.Tensor) and not isinstance(out, MetaTensor) and get_track_meta():
            out = MetaTensor(out)
        if isinstance(out, MetaTensor):
            out.meta = {**out.meta, MAP_META_KEY: self.record(label)}
        return out

    def spacing_of(self, label: NdarrayOrTensor) -> tuple[float, ...]:
        """The spacing the map of ``label`` is computed with: ``spacing``, else the MetaTensor's pixdim, else 1."""
        spatial_ndim = len(label.shape) - 1
        if self.spacing is not None:
            return spacing_tuple(self.spacing, spatial_ndim)
        if isinstance(label, MetaTensor):
            return spacing_tuple(label.pixdim, spatial_ndim)
        return (1.0,) * spatial_ndim

    def record(self, label: NdarrayOrTensor) -> dict:
        """What the map of ``label`` records: mode, spacing (mm per axis) and the mode's parameters."""
        return map_record(self.settings, self.spacing_of(label))


class DistanceMapd(MapTransform):
    """Dictionary version of :class:`DistanceMap`: writes the map of ``keys`` to ``output_key``, label untouched.

    Deterministic (not randomizable), so ``CacheDataset`` caches it. Put it before the random spatial transforms and
    list ``output_key`` in their keys (crops and flips then move map, image and label together, exactly). The map's
    record (mode, spacing, parameters; see :class:`DistanceMap`) also goes to the sidecar key
    ``f"{output_key}_meta_dict"``, which outlives ``EnsureTyped(track_meta=False)``; leave it out of the spatial
    transforms' keys. :class:`medseg.engine.PrepareBatchWithAux` hands it to the loss with the map. After
    interpolating transforms (rotation, zoom, affine, spacing changes), see ``docs/transforms.md``; a second
    ``DistanceMapd`` with the same ``output_key`` after them recomputes (and overwrites) the map.

    Args:
        keys: label key(s). output_key: key(s) of the new map(s), one per label key (default ``"dist"``).
        allow_missing_keys: skip missing keys. Other arguments: as :class:`DistanceMap`.
    """

    backend = DistanceMap.backend

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "signed",
        num_classes: int | None = None,
        output_key: str | Sequence[str] = "dist",
        spacing: Spacing | None = None,
        ignore_index: int | None = None,
        backend: str = "auto",
        dtype: torch.dtype = torch.float32,
        truncation: float = 5.0,
        bins: int = 5,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_balance: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))
        self.distance_map = DistanceMap(
            mode, num_classes, spacing, ignore_index, backend, dtype, truncation, bins, w0, sigma, class_balance
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            d[output_key] = self.distance_map(d[key])
            side = sidecar_key(output_key)
            d[side] = {**d.get(side, {}), MAP_META_KEY: self.distance_map.record(d[key])}
        return d


DistanceMapD = DistanceMapDict = DistanceMapd


@torch.no_grad()
def distance_maps(
    onehot: torch.Tensor,
    mode: str = "signed",
    spacing: Spacing | None = None,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
    truncation: float = 5.0,
    bins: int = 5,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
) -> torch.Tensor:
    """:class:`DistanceMap`'s maps for a one-hot batch ``(B, C, *spatial)``, on its device, without gradient.

    For losses whose batch carries no cached map (``target`` and ``mask`` of ``medseg.losses``' prepared input).
    Channels are independent classes (any subset, e.g. without background); ``unet_weight`` reads channel 0 as
    background and returns ``(B, 1, *spatial)``. With ``edt`` and exclusive channels, one multi-label pass per item
    gives every class's inside distances, and each class's outside distances are computed inside its bounding box
    (a binary problem needs nothing more: each class's outside is the other's inside); masked voxels or overlapping
    channels cost one transform per class and side.

    Args:
        onehot: 0/1 tensor ``(B, C, H, W[, D])``.
        spacing: one value, one per spatial axis, or ``(B, n_spatial)`` per item; ``None``: voxel units.
        mask: ``(B, 1, *spatial)``, nonzero where a voxel takes part (``None``: all); maps are 0 elsewhere.
        Others: as :class:`DistanceMap`.
    """
    if onehot.ndim not in (4, 5):
        raise ValueError(f"onehot must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(onehot.shape)}")
    batch, spatial_ndim = onehot.shape[0], onehot.ndim - 2
    if mask is not None and (
        mask.ndim != onehot.ndim or mask.shape[:2] != (batch, 1) or mask.shape[2:] != onehot.shape[2:]
    ):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match onehot {tuple(onehot.shape)}: use (B, 1, *spatial)"
        )
    settings = MapSettings(mode, float(truncation), int(bins), float(w0), float(sigma), class_balance, backend, dtype)
    spacings = torch.as_tensor(1.0 if spacing is None else spacing, dtype=torch.float64)
    spacings = spacings.expand(batch, *spacings.shape) if spacings.ndim < 2 else spacings
    if spacings.shape[0] != batch:
        raise ValueError(f"spacing has {spacings.shape[0]} rows for a batch of {batch}")
    distance_backend = get_backend(backend, onehot.device)
    xp = distance_backend.xp
    values = distance_backend.asarray(onehot)
    check_binary(xp, values, "onehot")
    known = None if mask is None else distance_backend.asarray(mask[:, 0]) != 0
    maps = [
        item_maps(
            values[b] > 0,
            None if known is None or known[b].all() else known[b],
            spacing_tuple(spacings[b], spatial_ndim),
            settings,
            distance_backend,
        )
        for b in range(batch)
    ]
    return distance_backend.to_tensor(xp.stack(maps), onehot.device)
