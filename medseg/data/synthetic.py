"""Synthetic Synapse/BTCV abdomen CT and Cityscapes street scenes, written in the real datasets' layouts.

Deterministic (one generator per case, seeded by ``(seed, case)``) and fast: the loaders, bundles and tests
run on them without the real data. ``python scripts/make_synthetic_data.py --help`` is the command line.

Abdomen: a body outline (skin, fat, muscle wall, bowel texture, spine) with the 13 BTCV organs as perturbed
ellipsoids and tubes of realistic relative size and position (liver large; gallbladder, pancreas, adrenal
glands small; aorta thin and long), CT-like HU values with partial-volume blur and Gaussian noise, and
anisotropic voxels: in-plane spacing ``FOV / size`` (FOV 340-420 mm), slices 3-5 times thicker.
Street: sky, buildings with windows, trees, road with lane marks in perspective, sidewalks, cars, people,
poles, and regions the evaluation ignores (ego vehicle, rectification border, static objects).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom

from .cityscapes import CITYSCAPES_LABELS, LABEL_ID_TO_TRAIN_ID
from .synapse import BTCV_LABELS, DEFAULT_BTCV_TO_SYNAPSE, SYNAPSE_TEST_CASES, SYNAPSE_TRAIN_CASES, case_name

__all__ = ["main", "make_cityscapes", "make_synapse", "synthetic_abdomen", "synthetic_street"]

#: Mean HU of each BTCV organ (portal-venous contrast phase, rounded textbook values).
ORGAN_HU: dict[int, float] = {1: 110, 2: 160, 3: 160, 4: 10, 5: 40, 6: 95, 7: 30, 8: 180, 9: 130, 10: 150, 11: 80}
ORGAN_HU |= {12: 30, 13: 30}
HU_WINDOW = (-125.0, 275.0)


class _Grid:
    """Voxel centres in mm around the body centre: x to the patient's left, y posterior, z superior."""

    def __init__(self, size: int, depth: int, spacing: tuple[float, float, float], z_centre: float) -> None:
        sx, sy, sz = spacing
        self.x = ((np.arange(size) - (size - 1) / 2) * sx)[None, None, :]
        self.y = ((np.arange(size) - (size - 1) / 2) * sy)[None, :, None]
        self.z = ((np.arange(depth) - (depth - 1) / 2) * sz + z_centre)[:, None, None]
        self.shape = (depth, size, size)
        self.spacing = spacing


def _smooth_field(rng: np.random.Generator, grid: _Grid, cell_mm: float) -> np.ndarray:
    """Smooth noise in [0, 1] varying over about ``cell_mm``: random values on a coarse grid, blurred, zoomed up."""
    extent_mm = (np.ptp(grid.z) + grid.spacing[2], np.ptp(grid.y) + grid.spacing[1], np.ptp(grid.x) + grid.spacing[0])
    small = tuple(max(2, math.ceil(e / cell_mm)) + 2 for e in extent_mm)
    field = gaussian_filter(rng.random(small), sigma=0.7)
    field = zoom(field, [n / s for n, s in zip(grid.shape, small, strict=True)], order=1)
    field = field[tuple(slice(0, n) for n in grid.shape)]
    return (field - field.min()) / max(float(np.ptp(field)), 1e-6)


def _ellipsoid(
    grid: _Grid, rng: np.random.Generator, centre: Sequence[float], axes: Sequence[float], bumpiness: float = 0.08
) -> np.ndarray:
    """An ellipsoid turned about z by up to ±15°, its radius perturbed by smooth bumps of height ``bumpiness``."""
    angle = rng.uniform(-math.pi / 12, math.pi / 12)
    dx, dy, dz = grid.x - centre[0], grid.y - centre[1], grid.z - centre[2]
    u = (math.cos(angle) * dx + math.sin(angle) * dy) / axes[0]
    v = (-math.sin(angle) * dx + math.cos(angle) * dy) / axes[1]
    w = dz / axes[2]
    radius = np.sqrt(u * u + v * v + w * w)
    bump = np.zeros_like(radius)
    for _ in range(3):
        direction = rng.normal(size=3) * 2.0
        projection = (direction[0] * u + direction[1] * v + direction[2] * w) / np.maximum(radius, 1e-6)
        bump = bump + rng.uniform(0, bumpiness) * np.sin(math.pi * projection + rng.uniform(0, 2 * math.pi))
    return radius < 1.0 + bump


def _tube(grid: _Grid, points: Sequence[Sequence[float]], radii: Sequence[float]) -> np.ndarray:
    """A tube along a polyline of (x, y, z) mm points, its radius interpolated linearly between the points."""
    inside = np.zeros(grid.shape, dtype=bool)
    for (p0, p1), (r0, r1) in zip(pairwise(points), pairwise(radii), strict=True):
        a, b = np.asarray(p0, dtype=float), np.asarray(p1, dtype=float)
        axis = b - a
        t = ((grid.x - a[0]) * axis[0] + (grid.y - a[1]) * axis[1] + (grid.z - a[2]) * axis[2]) / float(axis @ axis)
        t = np.clip(t, 0.0, 1.0)
        distance_sq = (grid.x - a[0] - t * axis[0]) ** 2 + (grid.y - a[1] - t * axis[1]) ** 2
        distance_sq = distance_sq + (grid.z - a[2] - t * axis[2]) ** 2
        inside |= distance_sq < (r0 + t * (r1 - r0)) ** 2
    return inside


def synthetic_abdomen(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One synthetic abdominal CT: ``(hu, labels, spacing)``.

    ``hu`` is int16 ``(D, H, W)`` (rows anterior → posterior, columns patient right → left, slices inferior
    → superior), ``labels`` uint8 with the 13 BTCV organ values, ``spacing`` (x, y, z) in mm.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 voxels, got {size}")
    fov = rng.uniform(340.0, 420.0)
    in_plane = fov / size
    z_extent = rng.uniform(230.0, 280.0)
    thickness = min(in_plane * rng.uniform(3.0, 5.0), z_extent / 8)
    depth = max(8, round(z_extent / thickness))
    spacing = (in_plane, in_plane, thickness)
    grid = _Grid(size, depth, spacing, z_centre=rng.uniform(45.0, 60.0))

    def jitter(scale: float) -> float:
        return float(rng.normal(0.0, scale))

    # body: skin/fat, muscle wall, visceral cavity; slightly wider towards the pelvis
    half_width = rng.uniform(140.0, 175.0) * (1 - 0.0004 * (grid.z - 40))
    half_depth = rng.uniform(100.0, 130.0)
    body_radius = np.sqrt((grid.x / half_width) ** 2 + (grid.y / half_depth) ** 2)
    fat_depth = rng.uniform(12.0, 25.0) / half_depth
    body = body_radius < 1.0
    cavity = body_radius < 1.0 - fat_depth - 10.0 / half_depth
    muscle = ~cavity & (body_radius < 1.0 - fat_depth)  # a 10 mm wall inside the subcutaneous fat

    hu = np.full(grid.shape, -1000.0)
    hu[np.broadcast_to(body, grid.shape)] = -100.0
    hu[np.broadcast_to(muscle, grid.shape)] = 45.0
    bowel = _smooth_field(rng, grid, cell_mm=30.0)
    visceral = np.where(bowel > 0.5, 35.0, -90.0)
    visceral = np.where(bowel > 0.95, -600.0, visceral)  # gas in the bowel
    cavity_full = np.broadcast_to(cavity, grid.shape)
    hu[cavity_full] = visceral[cavity_full]

    # spine: vertebral bodies with discs every ~30 mm, canal, paraspinal muscles (not labelled, no organ there)
    spine_y = half_depth * 0.62
    vertebra = (grid.x**2 + (grid.y - spine_y) ** 2) < 20.0**2
    disc = np.abs(((grid.z + rng.uniform(0, 30)) % 30.0) - 15.0) < 4.0
    canal = (grid.x**2 + (grid.y - spine_y - 30) ** 2) < 9.0**2
    paraspinal = (((np.abs(grid.x) - 40) / 22) ** 2 + ((grid.y - spine_y - 25) / 20) ** 2 < 1) & body
    hu[np.broadcast_to(vertebra, grid.shape)] = 450.0
    hu[np.broadcast_to(vertebra & disc, grid.shape)] = 80.0
    hu[np.broadcast_to(canal, grid.shape)] = 20.0
    hu[np.broadcast_to(paraspinal, grid.shape)] = 50.0
    organ_space = np.broadcast_to(cavity & ~vertebra & ~canal & ~paraspinal, grid.shape)

    labels = np.zeros(grid.shape, dtype=np.uint8)
    s = rng.uniform(0.9, 1.1)  # organ size factor of this patient
    right_lobe = _ellipsoid(grid, rng, (-55 + jitter(6), -5 + jitter(6), 80 + jitter(8)), (85 * s, 75 * s, 75 * s))
    left_lobe = _ellipsoid(grid, rng, (15 + jitter(6), -45 + jitter(4), 100 + jitter(6)), (50 * s, 28 * s, 35 * s))
    # painted in this order: later organs cover earlier ones where they overlap
    organs: list[tuple[int, np.ndarray]] = [
        (6, right_lobe | left_lobe),
        (1, _ellipsoid(grid, rng, (95 + jitter(6), 45 + jitter(5), 80 + jitter(8)), (25 * s, 45 * s, 50 * s))),
        (7, _ellipsoid(grid, rng, (55 + jitter(6), -25 + jitter(6), 75 + jitter(8)), (45 * s, 35 * s, 50 * s))),
        (2, _ellipsoid(grid, rng, (-62 + jitter(4), 55 + jitter(4), 5 + jitter(8)), (25 * s, 28 * s, 55 * s))),
        (3, _ellipsoid(grid, rng, (62 + jitter(4), 55 + jitter(4), 15 + jitter(8)), (25 * s, 28 * s, 55 * s))),
        (4, _ellipsoid(grid, rng, (-50 + jitter(4), -35 + jitter(4), 15 + jitter(6)), (15 * s, 16 * s, 35 * s))),
        (11, _tube(grid, [(-25, 0, 25), (20, 18, 35), (75, 30, 48)], (15 * s, 11 * s, 9 * s))),
        (9, _tube(grid, [(-24, 38, -150), (-24, 36, 60), (-30, 28, 115)], (12, 12, 13))),
        (8, _tube(grid, [(8, 42, -150), (12 + jitter(3), 40, 30), (10, 42, 200)], (10 * s, 11 * s, 12 * s))),
        (10, _tube(grid, [(-45, 8, 50), (10, 12, 42), (85, 38, 55)], (6.5, 5.0, 5.0))),
        (5, _tube(grid, [(8, 30, 110), (5, 25, 200)], (8, 8))),
        (12, _ellipsoid(grid, rng, (-40 + jitter(3), 48, 72 + jitter(5)), (6, 10, 15), bumpiness=0.15)),
        (13, _ellipsoid(grid, rng, (40 + jitter(3), 45, 66 + jitter(5)), (6, 10, 15), bumpiness=0.15)),
    ]
    texture = _smooth_field(rng, grid, cell_mm=15.0) - 0.5
    for label, mask in organs:
        inside = mask & organ_space
        labels[inside] = label
        hu[inside] = ORGAN_HU[label] + rng.normal(0, 8) + 20.0 * texture[inside]

    hu = gaussian_filter(hu, sigma=(0.0, 0.6, 0.6))  # partial-volume blur in-plane
    hu += rng.normal(0.0, rng.uniform(12.0, 25.0), size=hu.shape)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), labels, spacing


def _case_ids(cases: int) -> tuple[list[int], list[int]]:
    """The Synapse case numbers of ``cases`` synthetic cases: the protocol's train/test ratio, in list order."""
    total = len(SYNAPSE_TRAIN_CASES) + len(SYNAPSE_TEST_CASES)
    if not 1 <= cases <= total:
        raise ValueError(f"cases must be in 1..{total} (the labelled BTCV cases), got {cases}")
    n_test = 0 if cases == 1 else max(1, round(cases * len(SYNAPSE_TEST_CASES) / total))
    return list(SYNAPSE_TRAIN_CASES[: cases - n_test]), list(SYNAPSE_TEST_CASES[:n_test])


def _to_synapse(hu: np.ndarray, labels: np.ndarray, mapping: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """TransUNet's preprocessing: HU clipped to [-125, 275] → [0, 1]; BTCV labels → Synapse labels."""
    image = (np.clip(hu.astype(np.float32), *HU_WINDOW) - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])
    lut = np.zeros(len(BTCV_LABELS) + 1, dtype=np.float32)
    for source, target in mapping.items():
        lut[source] = target
    return image.astype(np.float32), lut[labels]


def make_synapse(
    root: str | Path,
    layout: str = "transunet",
    cases: int = 30,
    size: int = 96,
    seed: int = 0,
    case_ids: Sequence[int] | None = None,
    datalist: bool = False,
    mapping: Mapping[int, int] = DEFAULT_BTCV_TO_SYNAPSE,
) -> Path:
    """Write synthetic abdominal CT under ``root`` in the TransUNet (``"transunet"``) or raw BTCV (``"btcv"``) layout.

    Case numbers follow the Synapse split: ``cases`` of them, train and test in the protocol's 18:12 ratio
    (all 30 for ``cases=30``), unless ``case_ids`` lists other numbers (they are then split into train/test
    lists in the same ratio, in the order given). ``datalist`` also writes a MONAI ``dataset_0.json``
    (btcv layout; train cases under ``training``, test cases under ``validation``). A case's volume
    depends only on ``seed`` and its number. Returns ``root``.
    """
    if layout not in ("transunet", "btcv"):
        raise ValueError(f"layout must be 'transunet' or 'btcv', got {layout!r}")
    if case_ids is None:
        train_ids, test_ids = _case_ids(cases)
    else:
        ids = [int(c) for c in case_ids]
        n_test = 0 if len(ids) < 2 else max(1, round(len(ids) * 12 / 30))
        train_ids, test_ids = ids[: len(ids) - n_test], ids[len(ids) - n_test :]
    root = Path(root)
    slice_names: list[str] = []
    for case_id in train_ids + test_ids:
        hu, labels, spacing = synthetic_abdomen(size, np.random.default_rng([seed, case_id]))
        if layout == "btcv":
            _write_btcv_case(root, case_id, hu, labels, spacing)
        elif case_id in train_ids:
            slice_names += _write_transunet_slices(root, case_name(case_id), *_to_synapse(hu, labels, mapping))
        else:
            _write_transunet_volume(root, case_name(case_id), *_to_synapse(hu, labels, mapping))
    if layout == "transunet":
        lists = root / "lists" / "lists_Synapse"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / "train.txt").write_text("".join(f"{n}\n" for n in slice_names))
        (lists / "test_vol.txt").write_text("".join(f"{case_name(c)}\n" for c in test_ids))
    elif datalist:
        _write_btcv_datalist(root, train_ids, test_ids)
    return root


def _write_transunet_slices(root: Path, name: str, image: np.ndarray, label: np.ndarray) -> list[str]:
    folder = root / "train_npz"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{name}_slice{index:03d}" for index in range(image.shape[0])]
    for index, slice_name in enumerate(names):
        np.savez(folder / f"{slice_name}.npz", image=image[index], label=label[index])
    return names


def _write_transunet_volume(root: Path, name: str, image: np.ndarray, label: np.ndarray) -> None:
    folder = root / "test_vol_h5"
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{name}.npy.h5", "w") as volume:
        volume.create_dataset("image", data=image)
        volume.create_dataset("label", data=label)


def _write_btcv_case(
    root: Path, case_id: int, hu: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float]
) -> None:
    # NIfTI arrays are (x, y, z); columns run to the patient's left and rows to posterior, so the affine
    # negates x and y (the LPS-derived orientation of converted DICOM series)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [spacing[0] * hu.shape[2] / 2, spacing[1] * hu.shape[1] / 2, -spacing[2] * hu.shape[0] / 2]
    for folder, prefix, array in (("img", "img", hu), ("label", "label", labels)):
        target = root / "RawData" / "Training" / folder
        target.mkdir(parents=True, exist_ok=True)
        image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
        image.header.set_xyzt_units("mm")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        nib.save(image, target / f"{prefix}{case_id:04d}.nii.gz")


def _write_btcv_datalist(root: Path, train_ids: Sequence[int], test_ids: Sequence[int]) -> None:
    def entries(ids: Sequence[int]) -> list[dict[str, str]]:
        return [
            {"image": f"RawData/Training/img/img{c:04d}.nii.gz", "label": f"RawData/Training/label/label{c:04d}.nii.gz"}
            for c in ids
        ]

    content = {
        "name": "BTCV (synthetic)",
        "description": "synthetic abdomen CT written by medseg.data.synthetic",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(k): v for k, v in BTCV_LABELS.items()}},
        "numTraining": len(train_ids) + len(test_ids),
        "numTest": 0,
        "training": entries(train_ids),
        "validation": entries(test_ids),
    }
    (root / "dataset_0.json").write_text(json.dumps(content, indent=2))


_CITYSCAPES_IDS = {label.name: label.id for label in CITYSCAPES_LABELS}
_CITYSCAPES_COLORS = {label.id: label.color for label in CITYSCAPES_LABELS if label.id >= 0}
_CITIES = {"train": ("aachen", "bremen"), "val": ("frankfurt",), "test": ("berlin",)}


def synthetic_street(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic street scene: ``(rgb uint8 (H, W, 3), labelIds uint8 (H, W))``."""
    if height < 16 or width < 32:
        raise ValueError(f"image must be at least 32x16 pixels, got {width}x{height}")
    rows, cols = np.mgrid[0:height, 0:width].astype(float)
    label = np.full((height, width), _CITYSCAPES_IDS["sky"], dtype=np.uint8)
    sky = np.array([110.0, 160.0, 215.0]) + rng.normal(0, 12, 3)
    rgb = sky * (0.85 + 0.25 * rows / height)[..., None]

    def box(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        return (cols >= min(x0, x1)) & (cols < max(x0, x1)) & (rows >= y0) & (rows < y1)

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((cols - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 < 1

    def paint(mask: np.ndarray, name: str, colour: Sequence[float], noise: float) -> None:
        label[mask] = _CITYSCAPES_IDS[name]
        rgb[mask] = np.asarray(colour, dtype=float) + rng.normal(0, noise, (int(mask.sum()), 3))

    # perspective: the ground plane below the horizon, its width growing linearly towards the bottom row
    horizon = height * rng.uniform(0.38, 0.5)
    vanish_x = width * rng.uniform(0.4, 0.6)
    below = np.clip((rows - horizon) / (height - horizon), 0, None)  # 0 at the horizon, 1 at the bottom row
    road_slope = rng.uniform(0.35, 0.45)  # road half-width / image width at the bottom row
    walk_slope = road_slope + rng.uniform(0.12, 0.2)
    offset = np.abs(cols - vanish_x)
    building_base = horizon + offset / (width * walk_slope) * (height - horizon)

    def ground_row(depth: float) -> float:
        return horizon + depth * (height - horizon)

    # buildings along both sides standing on the sidewalk's outer edge, windows as darker cells
    for side in (-1, 1):
        x = vanish_x
        while 0 <= x <= width:
            block = width * rng.uniform(0.06, 0.16)
            top = height * rng.uniform(0.02, 0.3) * (1 - abs(x - vanish_x) / width)
            facade = box(x, x + side * block, top, height) & (rows < building_base)
            paint(facade, "building", rng.uniform(60, 170, 3) * np.array([1.0, 0.95, 0.9]), noise=8)
            window = max(2.0, block / 6)
            rgb[facade & ((cols % (2 * window)) < window) & (((rows - top) % 9) < 4)] *= 0.55
            x += side * block
    # trees: a trunk and an elliptic crown
    for _ in range(rng.integers(1, 4)):
        tx, depth = rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.25)
        base, scale = ground_row(depth), depth + 0.2
        crown = ellipse(tx, base - height * 0.25 * scale, width * 0.07 * scale, height * 0.15 * scale)
        trunk_half = max(1.0, width * 0.006 * scale)
        trunk = box(tx - trunk_half, tx + trunk_half, base - height * 0.2 * scale, base)
        paint(trunk | crown, "vegetation", (70, 105, 40), noise=18)
    # road with dashed lane marks, sidewalks beside it
    ground = rows >= horizon
    road = ground & (offset < below * width * road_slope)
    paint(ground & ~road & (offset < below * width * walk_slope), "sidewalk", (175, 150, 165), noise=9)
    paint(road, "road", (95, 90, 98), noise=7)
    marks = road & (offset < np.maximum(1.0, below * width * 0.008)) & ((np.log1p(below * 40) * 3 % 1.0) < 0.5)
    rgb[marks] = 230.0
    # poles at the kerb, people on the sidewalk, cars on the road, sized by their distance
    for _ in range(rng.integers(1, 4)):
        depth, side = rng.uniform(0.15, 0.9), rng.choice([-1, 1])
        px, half = vanish_x + side * (depth * width * road_slope + 1), max(1.0, width * 0.004 * depth)
        base = ground_row(depth)
        paint(box(px - half, px + half, base - height * 0.7 * depth, base), "pole", (150, 150, 150), noise=6)
    for _ in range(rng.integers(1, 4)):
        depth, side = rng.uniform(0.2, 0.9), rng.choice([-1, 1])
        px, base = vanish_x + side * depth * width * rng.uniform(road_slope, walk_slope), ground_row(depth)
        body = ellipse(px, base - height * 0.16 * depth, width * 0.012 * depth + 1, height * 0.16 * depth + 1)
        head_radius = height * 0.04 * depth + 0.8
        head = ellipse(px, base - height * 0.35 * depth, head_radius, head_radius)
        paint(body | head, "person", rng.uniform(40, 200, 3), noise=10)
    for _ in range(rng.integers(1, 4)):
        depth = rng.uniform(0.2, 0.9)
        cx, base = vanish_x + rng.uniform(-0.7, 0.7) * depth * width * road_slope, ground_row(depth)
        half_w, car_h = width * 0.09 * depth + 1, height * 0.22 * depth + 1
        cabin = box(cx - 0.7 * half_w, cx + 0.7 * half_w, base - car_h, base - 0.6 * car_h)
        paint(box(cx - half_w, cx + half_w, base - 0.6 * car_h, base) | cabin, "car", rng.uniform(20, 220, 3), 6)
        rgb[cabin & (rows > base - car_h * 0.9)] *= 0.4
    # regions the evaluation ignores: a static object on the sidewalk, the ego vehicle's bonnet, the border
    sx = vanish_x + rng.choice([-1, 1]) * width * (road_slope + walk_slope) / 4
    sy = ground_row(0.5)
    paint(box(sx - width * 0.02, sx + width * 0.02, sy - height * 0.03, sy + height * 0.03), "static", (90, 80, 60), 5)
    bonnet = rows > height * (0.93 - 0.04 * np.cos(np.pi * (cols / width - 0.5)) ** 2)
    paint(bonnet, "ego vehicle", (30, 30, 35), noise=4)
    border = max(1, width // 100)
    paint((cols < border) | (cols >= width - border), "rectification border", (0, 0, 0), noise=0)

    rgb = gaussian_filter(rgb, sigma=(0.6, 0.6, 0)) + rng.normal(0, 4, rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), label


def make_cityscapes(root: str | Path, cases: int = 12, size: int = 256, seed: int = 0, train_ids: bool = False) -> Path:
    """Write ``cases`` labelled synthetic street scenes (``size`` × ``size/2``) in the Cityscapes layout.

    Train and val split in Cityscapes' 2975:500 ratio (at least one val image when ``cases`` ≥ 2), and as
    many unlabelled test images as val images. Each labelled image gets ``_gtFine_labelIds.png`` and
    ``_gtFine_color.png``, and ``_gtFine_labelTrainIds.png`` with ``train_ids``. Returns ``root``.
    """
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    n_val = 0 if cases == 1 else max(1, round(cases * 500 / 3475))
    counts = {"train": cases - n_val, "val": n_val, "test": n_val}
    root = Path(root)
    train_lut = np.zeros(256, dtype=np.uint8)
    colour_lut = np.zeros((256, 3), dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        train_lut[label_id] = train_id
        colour_lut[label_id] = _CITYSCAPES_COLORS[label_id]
    index = 0
    for split, count in counts.items():
        cities = _CITIES[split]
        for number in range(count):
            city = cities[number % len(cities)]
            stem = f"{city}_{number:06d}_000019"
            rgb, label_ids = synthetic_street(size // 2, size, np.random.default_rng([seed, index]))
            index += 1
            image_dir = root / "leftImg8bit" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb, mode="RGB").save(image_dir / f"{stem}_leftImg8bit.png")
            if split == "test":
                continue
            label_dir = root / "gtFine" / split / city
            label_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(label_ids, mode="L").save(label_dir / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(colour_lut[label_ids], mode="RGB").save(label_dir / f"{stem}_gtFine_color.png")
            if train_ids:
                Image.fromarray(train_lut[label_ids], mode="L").save(label_dir / f"{stem}_gtFine_labelTrainIds.png")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--dataset synapse|cityscapes|nnunet|msd --cases N --size S --seed K --out DIR`` (and options)."""
    from .synthetic_mri import make_msd, make_nnunet

    parser = argparse.ArgumentParser(
        description="Write synthetic Synapse/BTCV, Cityscapes, or MRI-like nnU-Net v2 / MSD data in their layouts."
    )
    parser.add_argument("--dataset", choices=("synapse", "cityscapes", "nnunet", "msd"), required=True)
    parser.add_argument("--layout", choices=("transunet", "btcv"), default="transunet", help="Synapse only")
    parser.add_argument("--cases", type=int, default=None, help="cases/images (default: 30 Synapse, 12 Cityscapes)")
    parser.add_argument("--size", type=int, default=None, help="in-plane size / image width (default 96 / 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="the dataset root to write")
    parser.add_argument("--datalist", action="store_true", help="btcv layout: also write dataset_0.json")
    parser.add_argument("--train-ids", action="store_true", help="cityscapes: also write _gtFine_labelTrainIds.png")
    parser.add_argument("--channels", nargs="+", default=["T2"], help="nnunet/msd: T2 ADC FLAIR T1 (one per channel)")
    parser.add_argument("--classes", type=int, default=3, help="nnunet/msd: classes with background, 2-4")
    parser.add_argument("--test-cases", type=int, default=2, help="nnunet/msd: imagesTs cases (with labelsTs)")
    parser.add_argument("--file-ending", default=".nii.gz", help="nnunet: .nii.gz, .nrrd, .mha, .png (2D) ...")
    args = parser.parse_args(argv)
    if args.dataset == "synapse":
        make_synapse(args.out, args.layout, args.cases or 30, args.size or 96, args.seed, datalist=args.datalist)
    elif args.dataset == "cityscapes":
        make_cityscapes(args.out, args.cases or 12, args.size or 256, args.seed, train_ids=args.train_ids)
    else:
        common = {"cases": args.cases or 8, "test_cases": args.test_cases, "size": args.size or 32, "seed": args.seed}
        common |= {"classes": args.classes, "channels": args.channels}
        if args.dataset == "msd":
            make_msd(args.out, **common)
        else:
            dims = 2 if args.file_ending.lower() in (".png", ".bmp") else 3
            make_nnunet(args.out, file_ending=args.file_ending, spatial_dims=dims, **common)
    print(f"wrote synthetic {args.dataset} to {args.out}")
    return 0
