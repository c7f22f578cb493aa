"""Distance-map transform timings, side by side: medseg's DistanceMapd, MONAI's DistanceTransformEDT, per-class scipy.

Also times CacheDataset construction with and without the distance map. Imported by bench_losses.py
(``--section transforms``); runs alone too:

    python scripts/bench_transforms.py --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import torch
from monai.data import CacheDataset
from monai.transforms import DistanceTransformEDT
from scipy import ndimage

from medseg.transforms import DistanceMap, DistanceMapd

CASES = {
    "CT volume 512x512x128, 13 labels, spacing (0.8, 0.8, 2.5)": ((512, 512, 128), 14, (0.8, 0.8, 2.5)),
    "patch 96^3, 14 classes, spacing (1.5, 1.5, 2.0)": ((96, 96, 96), 14, (1.5, 1.5, 2.0)),
}


def organ_label_map(shape, num_classes: int, seed: int = 0) -> np.ndarray:
    """Ellipsoid 'organs' of random sizes and positions on background 0 (later classes overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    label = np.zeros(shape, dtype=np.uint8)
    for c in range(1, num_classes):
        centre = [rng.uniform(0.2, 0.8) * n for n in shape]
        radii = [rng.uniform(0.04, 0.18) * n for n in shape]
        inside = sum(((g - m) / r) ** 2 for g, m, r in zip(grid, centre, radii, strict=True)) <= 1
        label[inside] = c
    return label


def per_class_scipy(label: np.ndarray, num_classes: int, spacing) -> np.ndarray:
    """The reference-code way: two scipy EDTs per class (inside and outside), signed map."""
    out = np.zeros((num_classes, *label.shape), dtype=np.float32)
    for c in range(num_classes):
        mask = label == c
        if mask.any() and not mask.all():
            outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
            inside = ndimage.distance_transform_edt(mask, sampling=spacing)
            out[c] = outside * ~mask - (inside - min(spacing)) * mask
    return out


def monai_edt(label: np.ndarray, num_classes: int) -> torch.Tensor:
    """MONAI's DistanceTransformEDT on the one-hot label and on its complement (no spacing argument)."""
    onehot = torch.from_numpy(np.stack([label == c for c in range(num_classes)])).float()
    edt = DistanceTransformEDT()
    return edt(1 - onehot) - edt(onehot)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_distance_maps(repeats: int = 1) -> pd.DataFrame:
    rows = []
    for case, (shape, num_classes, spacing) in CASES.items():
        label = organ_label_map(shape, num_classes)
        ours = DistanceMap(mode="signed", num_classes=num_classes, spacing=spacing)
        label_t = torch.from_numpy(label[None].astype(np.int64))
        t_ours = median_seconds(lambda: ours(label_t), repeats)  # noqa: B023
        t_monai = median_seconds(lambda: monai_edt(label, num_classes), repeats)  # noqa: B023
        t_scipy = median_seconds(lambda: per_class_scipy(label, num_classes, spacing), repeats)  # noqa: B023
        rows.append(
            {
                "case": case,
                "medseg_s": t_ours,
                "monai_edt_s": t_monai,
                "scipy_per_class_s": t_scipy,
                "x_faster_than_scipy": t_scipy / t_ours,
                "x_faster_than_monai": t_monai / t_ours,
            }
        )
    return pd.DataFrame(rows).set_index("case")


def bench_cache_dataset(items: int = 4, shape=(96, 96, 96), num_classes: int = 14) -> pd.DataFrame:
    data = [{"label": organ_label_map(shape, num_classes, seed=i)[None].astype(np.int64)} for i in range(items)]
    dist = DistanceMapd(keys="label", mode="signed", num_classes=num_classes, spacing=(1.5, 1.5, 2.0))
    rows = []
    for name, transform in (("without distance map", None), ("with DistanceMapd (signed)", dist)):
        start = time.perf_counter()
        CacheDataset(data, transform, cache_rate=1.0, num_workers=0, progress=False)
        seconds = time.perf_counter() - start
        rows.append({"CacheDataset build": name, "items": items, "seconds": seconds, "s_per_item": seconds / items})
    return pd.DataFrame(rows).set_index("CacheDataset build")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(bench_distance_maps(args.repeats).round(3).to_markdown())
    print()
    print(bench_cache_dataset().round(3).to_markdown())


if __name__ == "__main__":
    main()
