"""Synthetic MRI-like datasets in the nnU-Net v2 raw and the Medical Segmentation Decathlon layouts, for tests.

Not CT on purpose: intensities are in arbitrary scanner units (a random gain per case), a smooth multiplicative
bias field shades each volume, noise is Rician (the magnitude of complex Gaussian noise), and the background is
dark but not zero, so a fixed intensity window would fail and per-image z-scoring is needed. A body ellipsoid holds
up to three structures: ``organ`` (a large ellipsoid), ``lesion`` (a small blob at the organ's edge) and ``cyst``
(a small sphere elsewhere in the body); ``classes`` (2–4, background included) picks the first ones. Each channel
(``T2``, ``ADC``, ``FLAIR``, ``T1``) has its own contrast between them. Voxels are anisotropic (slices 2.5–4 times
thicker than the in-plane spacing) and every case has its own shape, spacing and position.

``python scripts/make_synthetic_data.py --dataset nnunet|msd --out DIR`` is the command line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter, zoom

__all__ = ["CHANNEL_CONTRASTS", "STRUCTURES", "make_msd", "make_nnunet", "synthetic_mri"]

#: Structure names in label order after the background.
STRUCTURES = ("organ", "lesion", "cyst")
#: Mean intensity per tissue (background, body, organ, lesion, cyst) for each channel name, arbitrary units.
CHANNEL_CONTRASTS: dict[str, tuple[float, ...]] = {
    "T2": (20.0, 400.0, 650.0, 950.0, 1400.0),
    "ADC": (15.0, 900.0, 1200.0, 500.0, 2400.0),
    "FLAIR": (10.0, 350.0, 420.0, 900.0, 120.0),
    "T1": (25.0, 500.0, 380.0, 300.0, 150.0),
}


def _smooth(rng: np.random.Generator, shape: Sequence[int], cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1] varying over about ``1/cells`` of each axis."""
    coarse = gaussian_filter(rng.normal(size=[cells + 2] * len(shape)), sigma=0.8)
    field = zoom(coarse, [s / (cells + 2) for s in shape], order=1)[tuple(slice(0, s) for s in shape)]
    return field / max(float(np.abs(field).max()), 1e-6)


def _ellipsoid(grid: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) < 1.0


def synthetic_mri(
    shape: Sequence[int], spacing: Sequence[float], classes: int, channels: Sequence[str], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic MRI case: ``(image (C, *shape) float32, labels shape uint8)``, arrays in (x, y[, z]) order.

    ``spacing`` is in mm per axis; structures are placed in mm, so they keep their physical size on any grid.
    """
    if not 2 <= classes <= len(STRUCTURES) + 1:
        raise ValueError(f"classes must be 2..{len(STRUCTURES) + 1} (background included), got {classes}")
    unknown = [c for c in channels if c not in CHANNEL_CONTRASTS]
    if unknown:
        raise ValueError(f"unknown channel names {unknown}; known: {sorted(CHANNEL_CONTRASTS)}")
    extent = [n * s for n, s in zip(shape, spacing, strict=True)]
    grid = np.meshgrid(
        *[(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(shape, spacing, extent, strict=True)], indexing="ij"
    )
    half = [e / 2 for e in extent]
    body = _ellipsoid(grid, [rng.uniform(-0.05, 0.05) * h for h in half], [rng.uniform(0.75, 0.9) * h for h in half])
    tissue = body.astype(np.uint8)  # 0 background, 1 body, 2.. structures
    organ_centre = [rng.uniform(-0.2, 0.2) * h for h in half]
    organ_radii = [rng.uniform(0.35, 0.45) * h for h in half]
    structures = [_ellipsoid(grid, organ_centre, organ_radii) & body]
    direction = rng.normal(size=len(shape))
    direction /= np.linalg.norm(direction)
    lesion_centre = [c + 0.8 * d * r for c, d, r in zip(organ_centre, direction, organ_radii, strict=True)]
    lesion_radius = rng.uniform(0.5, 0.65) * min(organ_radii)
    structures.append(_ellipsoid(grid, lesion_centre, [lesion_radius] * len(shape)) & body)
    cyst_centre = [-c + rng.uniform(-0.1, 0.1) * h for c, h in zip(organ_centre, half, strict=True)]
    structures.append(_ellipsoid(grid, cyst_centre, [rng.uniform(0.15, 0.22) * min(half)] * len(shape)) & body)
    labels = np.zeros(tuple(shape), dtype=np.uint8)
    for value, mask in enumerate(structures[: classes - 1], start=1):
        tissue[mask] = value + 1
        labels[mask] = value
    bias = np.exp(rng.uniform(0.2, 0.35) * _smooth(rng, shape, 2))
    gain = rng.uniform(0.5, 2.0)
    texture = 0.06 * _smooth(rng, shape, 6)
    blur = [0.6 * min(spacing) / s for s in spacing]
    image = np.empty((len(channels), *shape), dtype=np.float32)
    for index, name in enumerate(channels):
        means = np.asarray(CHANNEL_CONTRASTS[name]) * rng.uniform(0.9, 1.1, size=5)
        clean = gaussian_filter(means[tissue] * (1.0 + texture), sigma=blur) * bias * gain
        sigma = 0.04 * means[1] * gain
        real, imaginary = clean + rng.normal(0.0, sigma, shape), rng.normal(0.0, sigma, shape)
        image[index] = np.hypot(real, imaginary)  # Rician noise: the magnitude of a complex signal
    return image, labels


def _case_geometry(rng: np.random.Generator, size: int, spatial_dims: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """A case's shape and spacing (mm): in-plane ``size ± 15 %`` at 200 mm / size, slices 2.5–4 times thicker."""
    in_plane = 200.0 / size * rng.uniform(0.9, 1.1)
    sizes = [max(8, round(size * rng.uniform(0.85, 1.15))) for _ in range(2)]
    if spatial_dims == 2:
        return tuple(sizes), (in_plane, in_plane)
    thickness = in_plane * rng.uniform(2.5, 4.0)
    depth = max(6, round(size * in_plane / thickness * rng.uniform(0.8, 1.0)))
    return (*sizes, depth), (in_plane, in_plane, thickness)


def _affine(spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """A RAS affine as converted scanner data has: x and y flipped (LPS-derived), centred on the origin."""
    spacing3 = [*spacing, 1.0][:3]
    shape3 = [*shape, 1][:3]
    affine = np.diag([-spacing3[0], -spacing3[1], spacing3[2], 1.0])
    affine[:3, 3] = [spacing3[0] * shape3[0] / 2, spacing3[1] * shape3[1] / 2, -spacing3[2] * shape3[2] / 2]
    return affine


def _write(array: np.ndarray, spacing: Sequence[float], path: Path, label: bool = False) -> None:
    """Write an (x, y[, z][, c]) array: NIfTI with nibabel, PNG as 8-bit, other endings with SimpleITK."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    spatial = len(spacing)
    if name.endswith((".nii", ".nii.gz")):
        data = array.astype(np.uint8 if label else np.float32)
        image = nib.Nifti1Image(data, _affine(spacing, array.shape[:spatial]))
        image.header.set_xyzt_units("mm")
        image.set_qform(image.affine, code=1)
        image.set_sform(image.affine, code=1)
        nib.save(image, str(path))
        return
    if name.endswith(".png"):
        data = array.astype(np.uint8) if label else np.clip(array / np.percentile(array, 99.9) * 200, 0, 255)
        array = data.astype(np.uint8)
    elif not label:
        array = np.round(array).astype(np.int16)  # scanners store integers
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.uint8) if label else array).T)
    if not name.endswith(".png"):
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin([-s * n / 2 for s, n in zip(spacing, array.shape, strict=True)])
    sitk.WriteImage(image, str(path), True)


def _cases(prefix: str, train: int, test: int) -> tuple[list[str], list[str]]:
    names = [f"{prefix}_{i:03d}" for i in range(train + test)]
    return names[:train], names[train:]


def make_nnunet(
    root: str | Path,
    cases: int = 8,
    test_cases: int = 2,
    size: int = 32,
    classes: int = 3,
    channels: Sequence[str] = ("T2",),
    file_ending: str = ".nii.gz",
    spatial_dims: int = 3,
    seed: int = 0,
    test_labels: bool = True,
) -> Path:
    """Write a synthetic nnU-Net v2 raw dataset (``Dataset9XX_SyntheticMRI`` layout) under ``root``; returns root.

    ``cases`` training cases in ``imagesTr``/``labelsTr`` and ``test_cases`` in ``imagesTs`` (with ``labelsTs``
    when ``test_labels``); one file per channel, ``<case>_<XXXX><file_ending>``. ``spatial_dims=2`` writes 2D
    images (use ``.png`` or ``.nii.gz``). A case depends only on ``seed`` and its index.
    """
    root = Path(root)
    train, test = _cases("mri", cases, test_cases)
    for index, name in enumerate(train + test):
        rng = np.random.default_rng([seed, index])
        shape, spacing = _case_geometry(rng, size, spatial_dims)
        image, labels = synthetic_mri(shape, spacing, classes, channels, rng)
        folder = "Tr" if name in train else "Ts"
        for channel, array in enumerate(image):
            _write(array, spacing, root / f"images{folder}" / f"{name}_{channel:04d}{file_ending}")
        if folder == "Tr" or test_labels:
            _write(labels, spacing, root / f"labels{folder}" / f"{name}{file_ending}", label=True)
    dataset = {
        "name": "SyntheticMRI",
        "description": "synthetic MRI-like volumes written by medseg.data.synthetic_mri (not real data)",
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {"background": 0, **{s: i for i, s in enumerate(STRUCTURES[: classes - 1], start=1)}},
        "numTraining": len(train),
        "file_ending": file_ending,
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return root


def make_msd(
    root: str | Path,
    cases: int = 8,
    test_cases: int = 2,
    size: int = 32,
    classes: int = 3,
    channels: Sequence[str] = ("T2",),
    seed: int = 0,
    test_labels: bool = True,
) -> Path:
    """Write a synthetic Medical Segmentation Decathlon dataset (``TaskXX_SyntheticMRI`` layout) under ``root``.

    One NIfTI per case holding every channel (4D, channels last, when there are several), ``dataset.json`` with
    ``modality``, ``labels``, ``training`` (``./imagesTr/x.nii.gz`` paths) and ``test``. ``test_labels`` also writes
    ``labelsTs/`` (not part of MSD; medseg scores test cases against it). Returns ``root``.
    """
    root = Path(root)
    train, test = _cases("mri", cases, test_cases)
    for index, name in enumerate(train + test):
        rng = np.random.default_rng([seed, index])
        shape, spacing = _case_geometry(rng, size, 3)
        image, labels = synthetic_mri(shape, spacing, classes, channels, rng)
        folder = "Tr" if name in train else "Ts"
        volume = image[0] if len(channels) == 1 else np.moveaxis(image, 0, -1)
        _write(volume, spacing, root / f"images{folder}" / f"{name}.nii.gz")
        if folder == "Tr" or test_labels:
            _write(labels, spacing, root / f"labels{folder}" / f"{name}.nii.gz", label=True)
    dataset = {
        "name": "SyntheticMRI",
        "description": "synthetic MRI-like volumes written by medseg.data.synthetic_mri (not real data)",
        "tensorImageSize": "4D" if len(channels) > 1 else "3D",
        "modality": {str(i): c for i, c in enumerate(channels)},
        "labels": {"0": "background", **{str(i): s for i, s in enumerate(STRUCTURES[: classes - 1], start=1)}},
        "numTraining": len(train),
        "numTest": len(test),
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in train],
        "test": [f"./imagesTs/{n}.nii.gz" for n in test],
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return root
