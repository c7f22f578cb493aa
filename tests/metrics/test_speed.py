"""Timing on a CT-sized case: 512×512×150 voxels, 13 abdominal structures (recorded in docs/evaluation.md)."""

import time

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.metrics import get_convention, score_label_maps
from medseg.metrics.evaluate import evaluate_folders

SHAPE = (150, 512, 512)  # (z, y, x)
SPACING = (2.5, 0.8, 0.8)  # mm along (z, y, x)
# semi-axes (z, y, x) in mm of 13 ellipsoids of about the size of the BTCV organs (liver ~1.6 L ... adrenal ~5 mL)
ORGANS_MM = [
    (50, 45, 45), (40, 30, 25), (40, 30, 25), (30, 15, 15), (80, 6, 6), (80, 90, 70), (50, 50, 60),
    (120, 10, 10), (120, 12, 12), (30, 8, 20), (25, 15, 45), (15, 6, 10), (15, 6, 10),
]  # fmt: skip


def paint_ellipsoid(volume: np.ndarray, label: int, centre_mm: np.ndarray, axes_mm: np.ndarray) -> None:
    spacing = np.array(SPACING)
    low = np.maximum(np.floor((centre_mm - axes_mm) / spacing).astype(int), 0)
    high = np.minimum(np.ceil((centre_mm + axes_mm) / spacing).astype(int) + 1, SHAPE)
    grid = np.ogrid[tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))]
    inside = sum(((g * s - c) / a) ** 2 for g, s, c, a in zip(grid, spacing, centre_mm, axes_mm, strict=True)) <= 1
    volume[tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))][inside] = label


def synthetic_ct(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference: 13 ellipsoids; prediction: each shifted by ~2 mm and scaled by ±10 %, plus a stray blob."""
    rng = np.random.default_rng(seed)
    extent = np.array(SHAPE) * np.array(SPACING)
    ref = np.zeros(SHAPE, dtype=np.uint8)
    pred = np.zeros(SHAPE, dtype=np.uint8)
    for label, axes in enumerate(ORGANS_MM, start=1):
        axes = np.array(axes, dtype=float)
        centre = rng.uniform(axes + 5, extent - axes - 5)
        paint_ellipsoid(ref, label, centre, axes)
        paint_ellipsoid(pred, label, centre + rng.normal(0, 2.0, 3), axes * rng.uniform(0.9, 1.1))
    paint_ellipsoid(pred, 1, extent * 0.1 + 20, np.array([10.0, 10.0, 10.0]))  # a false positive far away
    return pred, ref


@pytest.mark.slow
def test_ct_sized_case_is_scored_in_seconds(tmp_path):
    pred, ref = synthetic_ct()
    labels = {k: f"organ_{k}" for k in range(1, 14)}
    start = time.perf_counter()
    rows = score_label_maps(pred, ref, SPACING, labels, get_convention("clinical"))
    compute_s = time.perf_counter() - start
    assert all(r["empty_mask"] == "none" for r in rows)
    for folder, volume in (("pred", pred), ("ref", ref)):
        (tmp_path / folder).mkdir()
        image = sitk.GetImageFromArray(volume)
        image.SetSpacing(tuple(reversed(SPACING)))
        sitk.WriteImage(image, str(tmp_path / folder / "case0001.nii.gz"), useCompression=True)
    start = time.perf_counter()
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "ref", labels, progress=False)
    end_to_end_s = time.perf_counter() - start
    print(f"\n512x512x150, 13 structures: metrics {compute_s:.2f} s, with reading two .nii.gz {end_to_end_s:.2f} s")
    assert evaluation.table.dice.tolist() == pytest.approx([r["dice"] for r in rows])
    assert compute_s < 20.0  # about 0.5 s on one core; generous for a busy CI machine
