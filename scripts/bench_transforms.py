"""Distance-map timings, side by side: medseg's DistanceMap, scipy's EDT applied per class, MONAI's
DistanceTransformEDT; and the cost of the maps in a CacheDataset's first pass.

Every mode is timed on the same label map in interleaved repeats (medians); scipy computes, per class, the EDTs
that mode needs (inside and outside for ``signed``, ``unsigned``, ``penalty``; inside only for ``rrw`` and
``quantized``) and the mode's formula; ``max_diff`` is the largest difference between medseg's map and scipy's
(mm for ``signed`` and ``unsigned``). Imported by bench_losses.py (``--section transforms``); runs alone too:

    python scripts/bench_transforms.py --repeats 3 --threads 1
    python scripts/bench_transforms.py --clock cpu --repeats 7 --modes --cache-size 256 --cache-repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import CacheDataset
from monai.transforms import DistanceTransformEDT
from scipy import ndimage

from medseg.data.btcv import btcv_transforms
from medseg.data.synthetic import make_synapse
from medseg.transforms import DistanceMap, DistanceMapd

CASES = {
    "160x160x48": ((160, 160, 48), 14, (0.8, 0.8, 2.5)),
    "96^3": ((96, 96, 96), 14, (1.5, 1.5, 2.0)),
    "512x512x128": ((512, 512, 128), 14, (0.8, 0.8, 2.5)),
}
MODES = ("signed", "unsigned", "penalty", "rrw", "quantized")
TWO_SIDED = ("signed", "unsigned", "penalty")


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


def scipy_class_map(mask: np.ndarray, spacing, mode: str, truncation: float = 5.0, bins: int = 5) -> np.ndarray:
    """One class's map from scipy's EDTs of the mask (and of its complement where the mode needs it)."""
    if not mask.any() or mask.all():
        diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(mask.shape, spacing, strict=True)))
        full = bool(mask.all())
        value = {"signed": -diagonal if full else diagonal, "unsigned": 0.0, "penalty": 0.0}
        value |= {"rrw": -1.0 if full else 1.0, "quantized": float(bins) if full else 0.0}
        return np.full(mask.shape, value[mode], dtype=np.float32)
    inner = ndimage.distance_transform_edt(mask, sampling=spacing)
    outer = ndimage.distance_transform_edt(~mask, sampling=spacing) if mode in TWO_SIDED else None
    if mode == "signed":
        out = np.where(mask, min(spacing) - inner, outer)
    elif mode == "unsigned":
        out = inner + outer
    elif mode == "penalty":
        far_in, near_in = inner[mask].max(), inner[mask].min()
        far_out, near_out = outer[~mask].max(), outer[~mask].min()
        inside = (far_in - inner) / (far_in - near_in) if far_in > near_in else np.ones_like(inner)
        outside = (far_out - outer) / (far_out - near_out) if far_out > near_out else np.ones_like(outer)
        out = np.where(mask, inside, outside)
    elif mode == "rrw":
        out = np.where(mask, -inner / inner[mask].max(), 1.0)
    else:
        quantised = np.ceil(np.minimum(inner, truncation) * bins / truncation - 1e-4)
        out = np.where(mask, np.maximum(quantised, 1.0), 0.0)
    return out.astype(np.float32)


def scipy_per_class(label: np.ndarray, num_classes: int, spacing, mode: str) -> np.ndarray:
    return np.stack([scipy_class_map(label == c, spacing, mode) for c in range(num_classes)])


def monai_per_class(label: np.ndarray, num_classes: int, spacing, mode: str) -> torch.Tensor:
    """MONAI's DistanceTransformEDT on the one-hot label (and on its complement for two-sided modes), combined."""
    onehot = torch.from_numpy(np.stack([label == c for c in range(num_classes)])).float()
    edt = DistanceTransformEDT(sampling=list(spacing))
    inner = edt(onehot)
    if mode not in TWO_SIDED:
        return inner
    outer = edt(1 - onehot)
    return outer - inner if mode == "signed" else outer + inner


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, clock: str = "wall") -> dict[str, float]:
    """Median seconds of each function, timed in turn in every repeat (so load changes hit them alike).

    ``clock``: ``wall`` (elapsed) or ``cpu`` (this process's CPU time, user + system: on a machine shared with other
    jobs it does not count the time spent waiting for a core; everything here runs on one thread)."""
    tick = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = tick()
            fn()
            times[name].append(tick() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_distance_maps(
    repeats: int = 3, case: str = "160x160x48", modes=MODES, monai: bool = True, clock: str = "wall"
) -> pd.DataFrame:
    shape, num_classes, spacing = CASES[case]
    label = organ_label_map(shape, num_classes)
    label_t = torch.from_numpy(label[None].astype(np.int64))
    rows = []
    for mode in modes:
        ours = DistanceMap(mode=mode, num_classes=num_classes, spacing=spacing)
        fns: dict[str, Callable[[], object]] = {
            "medseg": lambda ours=ours: ours(label_t),
            "scipy": lambda mode=mode: scipy_per_class(label, num_classes, spacing, mode),
        }
        if monai:
            fns["monai"] = lambda mode=mode: monai_per_class(label, num_classes, spacing, mode)
        seconds = interleaved_medians(fns, repeats, clock)
        difference = np.abs(ours(label_t).numpy() - scipy_per_class(label, num_classes, spacing, mode)).max()
        row = {"case": f"{case}, {num_classes} labels, spacing {spacing}", "mode": mode}
        row |= {"medseg_s": seconds["medseg"], "scipy_s": seconds["scipy"]}
        row |= {"x_scipy": seconds["scipy"] / seconds["medseg"]}
        if monai:
            row |= {"monai_s": seconds["monai"], "x_monai": seconds["monai"] / seconds["medseg"]}
        rows.append(row | {"max_diff": float(difference)})
    return pd.DataFrame(rows).set_index(["case", "mode"])


def bench_cache_dataset(
    cases: int = 3, size: int = 512, mode: str = "signed", repeats: int = 1, clock: str = "wall"
) -> pd.DataFrame:
    """First pass of a CacheDataset over synthetic BTCV cases (NIfTI, 13 organs; ``size`` 512: BTCV's in-plane
    size, 0.7-0.8 mm voxels and 2-4 mm slices), synapse_unet3d's preprocessing (read, orient, resample to
    1.5 x 1.5 x 2 mm, window, crop to the body: about 200 x 145 x 125 voxels), with and without ``DistanceMapd``."""
    with tempfile.TemporaryDirectory() as root:
        make_synapse(root, layout="btcv", case_ids=list(range(1, cases + 1)), size=size, datalist=True)
        entries = json.loads((Path(root) / "dataset_0.json").read_text())
        data = [{k: str(Path(root) / v) for k, v in e.items()} for e in entries["training"] + entries["validation"]]
        pipelines = {
            "without distance map": btcv_transforms(train=True, mapping=None),
            f"with DistanceMapd ({mode})": btcv_transforms(
                train=True, mapping=None, aux_transforms=[DistanceMapd("label", mode=mode, num_classes=14)]
            ),
        }
        fns = {
            name: lambda t=transform: CacheDataset(data, t, cache_rate=1.0, num_workers=0, progress=False)
            for name, transform in pipelines.items()
        }
        seconds = interleaved_medians(fns, repeats, clock)
    plain = seconds["without distance map"]
    rows = [
        {"CacheDataset first pass": name, "cases": len(data), "seconds": s, "s_per_case": s / len(data)}
        | {"x_without": s / plain}
        for name, s in seconds.items()
    ]
    return pd.DataFrame(rows).set_index("CacheDataset first pass")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--case", choices=list(CASES), default="160x160x48")
    parser.add_argument("--modes", nargs="*", choices=MODES, default=list(MODES), help="none: skip the table")
    parser.add_argument("--no-monai", action="store_true", help="leave MONAI's DistanceTransformEDT out")
    parser.add_argument("--cache-cases", type=int, default=3, help="cases of the CacheDataset run (0: skip it)")
    parser.add_argument("--cache-size", type=int, default=512, help="in-plane voxels of the synthetic raw CT")
    parser.add_argument("--cache-repeats", type=int, default=1, help="interleaved repeats of the CacheDataset run")
    parser.add_argument(
        "--clock", choices=list(CLOCKS), default="wall", help="wall time, or process CPU time on a shared machine"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.modes:
        table = bench_distance_maps(args.repeats, args.case, args.modes, not args.no_monai, args.clock)
        print(table.to_markdown(floatfmt=".4g"))
    if args.cache_cases:
        print()
        cache = bench_cache_dataset(args.cache_cases, args.cache_size, repeats=args.cache_repeats, clock=args.clock)
        print(cache.round(3).to_markdown())


if __name__ == "__main__":
    main()
