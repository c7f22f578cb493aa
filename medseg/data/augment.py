"""nnU-Net's data augmentation (batchgenerators) as one MONAI dictionary transform.

Spatial (elastic deformation, rotation, scaling: one coordinate field), gamma and mirroring, applied to
images, labels and distance maps alike, each key resampled with its own interpolation order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from batchgenerators.augmentations.color_augmentations import augment_gamma
from batchgenerators.augmentations.utils import (
    create_zero_centered_coordinate_mesh,
    elastic_deform_coordinates,
    interpolate_img,
    rotate_coords_2d,
    rotate_coords_3d,
    scale_coords,
)
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_dst_type, convert_to_numpy, ensure_tuple

__all__ = ["NnUNetAugmentd"]


@contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global generator (which batchgenerators draws from) for a block, then restore it."""
    # batchgenerators draws from the legacy global generator: that is the state to seed and restore
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _draw_scale(rng: np.random.RandomState, low: float, high: float) -> float:
    """nnU-Net's scale draw: half the time below 1 (when ``low < 1``), otherwise at or above 1."""
    if rng.uniform() < 0.5 and low < 1:
        return float(rng.uniform(low, 1.0))
    return float(rng.uniform(max(low, 1.0), high))


class NnUNetAugmentd(Randomizable, MapTransform):
    r"""nnU-Net-style augmentation: elastic deformation, rotation, scaling, gamma and mirroring.

    The spatial part builds one sampling grid per call with batchgenerators' helpers
    (``create_zero_centered_coordinate_mesh``, ``elastic_deform_coordinates``, ``rotate_coords_2d/3d``,
    ``scale_coords``) and resamples every key on it with ``interpolate_img``: images with spline order
    ``image_order`` and zero padding, labels with ``label_order`` (per-label interpolation then argmax for
    order > 0, as nnU-Net) padded with ``label_fill``, distance maps with ``distance_order`` and edge padding.
    Gamma :math:`x \mapsto m + r\,((x - m)/r)^{\gamma}` with :math:`m`, :math:`r` the channel's minimum and
    range (batchgenerators' ``augment_gamma``, per channel, mean and std restored afterwards) applies to
    images only; the inverted variant (applied to :math:`-x`) has probability ``prob_inverted_gamma``. Mirroring
    flips every key along each of ``mirror_axes`` with probability ``prob_mirror``.

    Defaults are nnU-Net v2's (``nnUNetTrainer.get_training_transforms``): rotation ±30° and scaling in
    [0.7, 1.4] each with probability 0.2, image order 3, label order 1, gamma in [0.7, 1.5] with
    probabilities 0.3 (plain) and 0.1 (inverted), mirroring on all spatial axes. nnU-Net v2 switches elastic
    deformation off; its parameters here are nnU-Net v1's (alpha in [0, 900], sigma in [9, 13] voxels,
    probability 0.2); set ``prob_elastic=0`` for v2's behaviour.

    Distance maps are resampled, not recomputed: rotation and mirroring keep them exact up to interpolation,
    scaling and elastic deformation do not rescale their values. Where exact maps matter, compute them from
    the label after this transform. The affine in MetaTensor metadata is not updated (a training transform).
    Random draws come from this transform's generator (``set_random_state``); batchgenerators' own draws
    (elastic noise, gamma) run under a seed taken from it, leaving numpy's global state as it was.

    Reference: Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
    segmentation", Nature Methods 2021.

    Args:
        image_keys: intensity images ``(C, *spatial)``, 2D or 3D.
        label_keys: label maps ``(1, *spatial)`` (integer values).
        distance_keys: distance maps or other continuous per-voxel targets ``(C, *spatial)``.
        rotation_degrees: maximum absolute rotation angle per axis.
        prob_rotation, prob_scale, prob_elastic: probability of each spatial component per call.
        scale_range: the scale factor range (> 1 samples a larger region: objects shrink).
        elastic_alpha, elastic_sigma: ranges of the displacement magnitude and smoothness (voxels).
        gamma_range: the gamma range; ``prob_gamma`` / ``prob_inverted_gamma`` its probabilities.
        mirror_axes: spatial axes (0-based, channel excluded) that may be flipped; ``None`` for all.
        prob_mirror: probability of a flip along each of ``mirror_axes``.
        image_order, label_order, distance_order: spline orders of the resampling.
        label_fill: label value outside the original field of view.
        allow_missing_keys: skip keys absent from the dictionary.
    """

    def __init__(
        self,
        image_keys: KeysCollection,
        label_keys: KeysCollection = (),
        distance_keys: KeysCollection = (),
        rotation_degrees: float = 30.0,
        prob_rotation: float = 0.2,
        scale_range: Sequence[float] = (0.7, 1.4),
        prob_scale: float = 0.2,
        elastic_alpha: Sequence[float] = (0.0, 900.0),
        elastic_sigma: Sequence[float] = (9.0, 13.0),
        prob_elastic: float = 0.2,
        gamma_range: Sequence[float] = (0.7, 1.5),
        prob_gamma: float = 0.3,
        prob_inverted_gamma: float = 0.1,
        mirror_axes: Sequence[int] | None = None,
        prob_mirror: float = 0.5,
        image_order: int = 3,
        label_order: int = 1,
        distance_order: int = 1,
        label_fill: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        self.image_keys = ensure_tuple(image_keys)
        self.label_keys = ensure_tuple(label_keys)
        self.distance_keys = ensure_tuple(distance_keys)
        all_keys = self.image_keys + self.label_keys + self.distance_keys
        if not self.image_keys:
            raise ValueError("NnUNetAugmentd needs at least one image key")
        if len(set(all_keys)) != len(all_keys):
            raise ValueError(f"a key is listed twice among image, label and distance keys: {all_keys}")
        super().__init__(all_keys, allow_missing_keys)
        for name, p in (
            ("prob_rotation", prob_rotation),
            ("prob_scale", prob_scale),
            ("prob_elastic", prob_elastic),
            ("prob_gamma", prob_gamma),
            ("prob_inverted_gamma", prob_inverted_gamma),
            ("prob_mirror", prob_mirror),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {tuple(scale_range)}")
        if not 0 < gamma_range[0] <= gamma_range[1]:
            raise ValueError(f"gamma_range must be 0 < low <= high, got {tuple(gamma_range)}")
        self.max_angle = math.radians(rotation_degrees)
        self.prob_rotation = prob_rotation
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.prob_scale = prob_scale
        self.elastic_alpha = (float(elastic_alpha[0]), float(elastic_alpha[1]))
        self.elastic_sigma = (float(elastic_sigma[0]), float(elastic_sigma[1]))
        self.prob_elastic = prob_elastic
        self.gamma_range = (float(gamma_range[0]), float(gamma_range[1]))
        self.prob_gamma = prob_gamma
        self.prob_inverted_gamma = prob_inverted_gamma
        self.mirror_axes = None if mirror_axes is None else tuple(int(a) for a in mirror_axes)
        self.prob_mirror = prob_mirror
        self.orders = {"image": image_order, "label": label_order, "distance": distance_order}
        self.label_fill = float(label_fill)
        self._params: dict[str, Any] = {}

    def randomize(self, data: Sequence[int]) -> None:
        """Draw this call's parameters for a spatial shape ``data``."""
        ndim = len(data)
        params: dict[str, Any] = {}
        if self.R.uniform() < self.prob_elastic:
            params["elastic"] = (
                float(self.R.uniform(*self.elastic_alpha)),
                float(self.R.uniform(*self.elastic_sigma)),
                int(self.R.randint(2**31)),
            )
        if self.R.uniform() < self.prob_rotation:
            params["angles"] = [float(self.R.uniform(-self.max_angle, self.max_angle)) for _ in range(ndim)]
        if self.R.uniform() < self.prob_scale:
            params["scale"] = _draw_scale(self.R, *self.scale_range)
        params["inverted_gamma"] = self.R.uniform() < self.prob_inverted_gamma
        params["gamma"] = self.R.uniform() < self.prob_gamma
        params["gamma_seed"] = int(self.R.randint(2**31))
        axes = range(ndim) if self.mirror_axes is None else self.mirror_axes
        for axis in axes:
            if not 0 <= axis < ndim:
                raise ValueError(f"mirror axis {axis} does not exist for {ndim} spatial dims")
        params["flips"] = [axis for axis in axes if self.R.uniform() < self.prob_mirror]
        self._params = params

    def sampling_grid(self, shape: Sequence[int]) -> np.ndarray | None:
        """The coordinates ``(ndim, *shape)`` to sample at, or ``None`` when no spatial change was drawn."""
        p = self._params
        if not {"elastic", "angles", "scale"} & set(p):
            return None
        coords = create_zero_centered_coordinate_mesh(tuple(shape))
        if "elastic" in p:
            alpha, sigma, seed = p["elastic"]
            with _global_numpy_seed(seed):
                coords = elastic_deform_coordinates(coords, alpha, sigma)
        if "angles" in p:
            angles = p["angles"]
            coords = rotate_coords_2d(coords, angles[0]) if len(shape) == 2 else rotate_coords_3d(coords, *angles)
        if "scale" in p:
            coords = scale_coords(coords, p["scale"])
        for axis, size in enumerate(shape):
            coords[axis] += size / 2.0 - 0.5
        return coords

    def _resample(self, array: np.ndarray, coords: np.ndarray, kind: str) -> np.ndarray:
        order = self.orders[kind]
        out = np.empty(array.shape, dtype=np.float32)
        for c in range(array.shape[0]):
            if kind == "image":
                out[c] = interpolate_img(array[c], coords, order, "constant", cval=0.0)
            elif kind == "label":
                out[c] = interpolate_img(array[c], coords, order, "constant", cval=self.label_fill, is_seg=True)
            else:
                out[c] = interpolate_img(array[c], coords, order, "nearest")
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        kinds = {k: "image" for k in self.image_keys} | {k: "label" for k in self.label_keys}
        kinds |= {k: "distance" for k in self.distance_keys}
        present = list(self.key_iterator(d))
        if not present:
            return d
        shapes = {k: tuple(d[k].shape[1:]) for k in present}
        shape = shapes[present[0]]
        if any(s != shape for s in shapes.values()) or len(shape) not in (2, 3):
            raise ValueError(f"NnUNetAugmentd needs (C, H, W[, D]) arrays of one spatial shape, got {shapes}")
        self.randomize(shape)
        coords = self.sampling_grid(shape)
        for key in present:
            # a copy: batchgenerators' gamma writes into its input, which must stay the caller's
            array = convert_to_numpy(d[key], dtype=np.float32).copy()
            if coords is not None:
                array = self._resample(array, coords, kinds[key])
            if kinds[key] == "image":
                array = self._gamma(array)
            for axis in self._params["flips"]:
                array = np.flip(array, axis=axis + 1)
            d[key] = convert_to_dst_type(np.ascontiguousarray(array), dst=d[key], dtype=np.float32)[0]
        return d

    def _gamma(self, array: np.ndarray) -> np.ndarray:
        with _global_numpy_seed(self._params["gamma_seed"]):
            if self._params["inverted_gamma"]:
                array = augment_gamma(array, self.gamma_range, invert_image=True, per_channel=True, retain_stats=True)
            if self._params["gamma"]:
                array = augment_gamma(array, self.gamma_range, invert_image=False, per_channel=True, retain_stats=True)
        return array
