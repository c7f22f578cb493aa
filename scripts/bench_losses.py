"""Forward+backward time and peak extra memory of every medseg loss, side by side with torch's cross-entropy and
the reference implementation (MONAI, kornia, pytorch-toolbelt).

Each loss is timed interleaved with the cross-entropy floor and with its reference in the same run, so that ratios
compare like with like on a busy machine; medians of ``--repeats`` rounds after one warm-up round. Peak extra memory
is the allocator's peak above what was allocated before the step, over one forward+backward: on CUDA
``torch.cuda.max_memory_allocated``; on the CPU the running sum of the allocations and frees that
``torch.profiler`` records with ``profile_memory=True`` (every tensor allocation, the CPU allocator's view).

    python scripts/bench_losses.py                          # both workloads, every loss, CPU, one thread
    python scripts/bench_losses.py --workload 2d --losses dice focal lovasz --repeats 7 --json now.json
    python scripts/bench_losses.py --clock cpu --json now.json        # CPU time: steadier on a shared machine
    python scripts/bench_losses.py --heap default                    # glibc's own heap (see CACHED_HEAP)
    python scripts/bench_losses.py --compare before.json now.json    # flag rows more than 10 % slower (x_ce)
    python scripts/bench_losses.py --targets now.json                # issue 13's targets, met or not, per loss
    python scripts/bench_losses.py --device cuda --markdown docs/bench_gpu.md
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import ModuleType

import monai.losses as ml
import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from medseg.losses import get_loss, list_losses, loss_info

WORKLOADS = {"2d": (8, 9, 224, 224), "3d": (2, 14, 96, 96, 96)}
# the losses that need only logits, labels and a map (not a network's features, a checkpoint or C·K channels)
NEEDS_MORE = {"conditional_boundary", "inverse_form", "boundary_aware"}
#: those of them that :func:`own_inputs` gives what they need (inverse_form needs a trained checkpoint)
OWN_INPUTS = {"conditional_boundary", "boundary_aware"}
#: extra rows: a registered loss under other arguments (row label -> (loss name, keyword arguments))
VARIANTS: dict[str, tuple[str, dict]] = {"focal[sigmoid]": ("focal", {})}


def _gwdl_matrix(c: int) -> torch.Tensor:
    return torch.ones(c, c) - torch.eye(c)


#: MONAI equivalents: loss name -> factory(num_classes) returning a module called as f(logits, labels)
EQUIVALENTS: dict[str, Callable[[int], Callable]] = {
    "dice": lambda c: ml.DiceLoss(to_onehot_y=True, softmax=True),
    "jaccard": lambda c: ml.DiceLoss(to_onehot_y=True, softmax=True, jaccard=True),
    "generalized_dice": lambda c: ml.GeneralizedDiceLoss(to_onehot_y=True, softmax=True),
    "gwdl": lambda c: ml.GeneralizedWassersteinDiceLoss(dist_matrix=_gwdl_matrix(c)),
    "tversky": lambda c: ml.TverskyLoss(to_onehot_y=True, softmax=True),
    "asym_similarity": lambda c: ml.TverskyLoss(to_onehot_y=True, softmax=True, alpha=1 / 3.25, beta=2.25 / 3.25),
    "focal": lambda c: ml.FocalLoss(to_onehot_y=True, use_softmax=True),
    "focal[sigmoid]": lambda c: ml.FocalLoss(to_onehot_y=True),
    "dice_ce": lambda c: ml.DiceCELoss(to_onehot_y=True, softmax=True),
    "dice_focal": lambda c: ml.DiceFocalLoss(to_onehot_y=True, softmax=True),
    "boundary": lambda c: ml.BoundaryLoss(to_onehot_y=True, softmax=True),
    "hausdorff_dt": lambda c: ml.HausdorffDTLoss(to_onehot_y=True, softmax=True),
}


def _named(label: str, fn: Callable) -> Callable:
    fn.bench_label = label
    return fn


def reference_label(fn: Callable | None) -> str:
    if fn is None:
        return ""
    return getattr(fn, "bench_label", f"monai.{type(fn).__name__}")


def toolbelt_lovasz() -> ModuleType | None:
    """pytorch-toolbelt's Lovász module (Berman's reference code), loaded from its file: the package's __init__
    imports OpenCV, which the losses do not need. None when pytorch-toolbelt is not installed."""
    spec = importlib.util.find_spec("pytorch_toolbelt")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "losses" / "lovasz.py"
    module_spec = importlib.util.spec_from_file_location("toolbelt_lovasz", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _other_equivalents() -> dict[str, Callable[[int], Callable]]:
    """kornia's Hausdorff-ER and pytorch-toolbelt's Lovász losses, where installed.

    Lovász-Softmax: toolbelt's ``_lovasz_softmax`` of the softmax (whole batch, present classes: medseg's defaults).
    Lovász hinge: toolbelt's binary ``_lovasz_hinge`` (per image) on each channel against its one-hot, averaged over
    channels (medseg's multi-channel hinge).
    """
    out: dict[str, Callable[[int], Callable]] = {}
    try:
        import kornia.losses as kl

        out["hausdorff_er"] = lambda c: _named("kornia.HausdorffERLoss", kl.HausdorffERLoss())
    except ImportError:
        pass
    toolbelt = toolbelt_lovasz()
    if toolbelt is not None:

        def softmax(x, y):
            return toolbelt._lovasz_softmax(x.softmax(1), y[:, 0], per_image=False)

        def hinge(x, y):
            terms = [toolbelt._lovasz_hinge(x[:, c], (y[:, 0] == c).long(), per_image=True) for c in range(x.shape[1])]
            return torch.stack(terms).mean()

        out["lovasz"] = lambda c: _named("toolbelt lovasz_softmax", softmax)
        out["lovasz_hinge"] = lambda c: _named("toolbelt lovasz_hinge per channel", hinge)
    return out


def loss_kwargs(name: str, num_classes: int) -> dict:
    """Logits in: ``softmax=True`` (``use_softmax=True`` for the focal loss, as its overlays train it) where the loss
    has the flag (the others apply their own activation); a ``VARIANTS`` row takes its own arguments."""
    if name in VARIANTS:
        return VARIANTS[name][1]
    if name == "gwdl":
        return {"dist_matrix": _gwdl_matrix(num_classes)}
    accepts = inspect.signature(loss_info(name).cls.__init__).parameters
    for flag in ("softmax", "use_softmax"):
        if flag in accepts:
            return {flag: True}
    return {}


def build_loss(row: str, num_classes: int) -> torch.nn.Module:
    """The loss a benchmark row times: a registered name, or a ``VARIANTS`` label."""
    name = VARIANTS[row][0] if row in VARIANTS else row
    return get_loss(name, **loss_kwargs(row, num_classes))


def blobby_labels(shape, generator: torch.Generator) -> torch.Tensor:
    """``(B, 1, *spatial)`` labels: the argmax of a smooth random field (blobs about 16 voxels across)."""
    batch, classes, *spatial = shape
    coarse = torch.randn(batch, classes, *[max(2, n // 16) for n in spatial], generator=generator)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=spatial, mode=mode).argmax(1, keepdim=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: ``wall``: elapsed time; ``cpu``: this process's CPU time (user + system), steadier on a CPU shared with other jobs
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_step(
    fn: Callable, logits: torch.Tensor, labels: torch.Tensor, aux: dict, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds for one forward+backward."""
    logits.grad = None
    _sync(logits.device)
    start = clock()
    fn(logits, labels, **aux).backward()
    _sync(logits.device)
    return clock() - start


def peak_extra_bytes(fn: Callable, logits: torch.Tensor, labels: torch.Tensor, aux: dict) -> int:
    """The allocator's peak above the memory in use before one forward+backward (see the module docstring)."""
    logits.grad = None
    if logits.is_cuda:
        _sync(logits.device)
        torch.cuda.reset_peak_memory_stats(logits.device)
        before = torch.cuda.memory_allocated(logits.device)
        fn(logits, labels, **aux).backward()
        _sync(logits.device)
        return torch.cuda.max_memory_allocated(logits.device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(logits, labels, **aux).backward()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    in_use = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        in_use += event.nbytes()
        peak = max(peak, in_use)
    return peak


def own_inputs(
    name: str, loss: torch.nn.Module, logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The input and aux maps a row times: the workload's logits and a random map per aux key, except for

    - ``conditional_boundary``: decoder features of the bundles' networks, random: in 2D TransUNet's (16 channels
      at full resolution, synapse_transunet), in 3D MONAI UNet's top level (channels (16, ...), strides 2:
      32 channels at half resolution, synapse_unet3d);
    - ``boundary_aware``: ``C·K`` random bin logits (K = 5) and the quantized distance map of the labels (made once,
      as the data pipeline caches it).

    The cross-entropy floor stays the workload's ``C``-channel logits: a ``boundary_aware`` row runs on K times as
    many logits.
    """
    batch, num_classes, *spatial = logits.shape
    generator = torch.Generator().manual_seed(1)
    if name == "conditional_boundary":
        shape = (batch, 16, *spatial) if len(spatial) == 2 else (batch, 32, *(n // 2 for n in spatial))
        features = torch.randn(shape, generator=generator).to(logits.device).requires_grad_(True)
        # the decoder's gradient is computed as in training, then dropped (no accumulation from step to step)
        features.register_post_accumulate_grad_hook(lambda leaf: setattr(leaf, "grad", None))
        return logits, {"features": features}
    if name == "boundary_aware":
        from medseg.transforms import distance_maps

        bins = torch.randn(batch, num_classes * loss.num_bins, *spatial, generator=generator).to(logits.device)
        onehot = torch.nn.functional.one_hot(labels[:, 0], num_classes).movedim(-1, 1).float()
        dist = distance_maps(onehot, "quantized", truncation=loss.truncation, bins=loss.num_bins)
        return bins.requires_grad_(True), {"dist": dist}
    return logits, {key: torch.rand(logits.shape, device=logits.device) for key in loss.aux_keys}


def bench_workload(shape, names, repeats: int, device: str, memory: bool = True, clock: str = "wall") -> pd.DataFrame:
    tick = CLOCKS[clock]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g).to(device).requires_grad_(True)
    labels = blobby_labels(shape, g).to(device)
    floor = torch.nn.CrossEntropyLoss()

    def ce_floor(x, y):
        return floor(x, y[:, 0])

    equivalents = {**EQUIVALENTS, **_other_equivalents()}
    ce_peak = peak_extra_bytes(ce_floor, logits, labels, {}) if memory else 0
    rows = []
    for name in tqdm(names, desc=f"{'x'.join(map(str, shape))}", leave=False):
        ours = build_loss(name, shape[1]).to(device)
        loss_input, aux = own_inputs(name, ours, logits, labels)
        other = equivalents[name](shape[1]) if name in equivalents else None
        times: dict[str, list[float]] = {"ce": [], "ours": [], "ref": []}
        if other is not None:
            try:  # kornia's losses are 2D only, for example: then there is no reference on this workload
                time_step(other, logits, labels, {})
            except (RuntimeError, ValueError):
                other = None
        for i in range(repeats + 1):  # the first round warms up and is dropped
            t = {
                "ce": time_step(ce_floor, logits, labels, {}, tick),
                "ours": time_step(ours, loss_input, labels, aux, tick),
            }
            if other is not None:
                t["ref"] = time_step(other, logits, labels, {}, tick)
            if i:
                for k, v in t.items():
                    times[k].append(v)
        med = {k: statistics.median(v) for k, v in times.items() if v}
        row = {
            "loss": name,
            "ms": 1e3 * med["ours"],
            "ce_ms": 1e3 * med["ce"],
            "x_ce": med["ours"] / med["ce"],
            "ref": reference_label(other),
            "ref_ms": 1e3 * med["ref"] if "ref" in med else float("nan"),
            "x_ref": med["ours"] / med["ref"] if "ref" in med else float("nan"),
        }
        if memory:
            peak = peak_extra_bytes(ours, loss_input, labels, aux)
            row |= {"peak_mb": peak / 2**20, "ce_peak_mb": ce_peak / 2**20, "x_ce_peak": peak / max(ce_peak, 1)}
        rows.append(row)
    return pd.DataFrame(rows).set_index("loss")


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=1)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


def compare(old_path: str, new_path: str, tolerance: float = 0.10) -> tuple[pd.DataFrame, bool]:
    """Rows of two ``--json`` result files side by side; ``slower`` where the new ``x_ce`` exceeds the old by more
    than ``tolerance`` (the time relative to cross-entropy in the same run, steadier than raw ms on a busy machine).

    Returns the table (rows in only one file are listed with NaN on the other side) and whether any row is slower.
    """
    frames = []
    for tag, path in (("old", old_path), ("new", new_path)):
        rows = pd.DataFrame(json.loads(Path(path).read_text())["rows"])
        frames.append(rows.set_index(["workload", "loss"])[["ms", "x_ce"]].add_prefix(f"{tag}_"))
    table = frames[0].join(frames[1], how="outer")
    table["change"] = table["new_x_ce"] / table["old_x_ce"] - 1
    table["slower"] = table["change"] > tolerance
    return table, bool(table["slower"].any())


#: issue 13's time targets, forward+backward as a multiple of cross-entropy, per workload (``DEFAULT_TARGET`` where a
#: loss or a workload is not listed): the Dice family's 1.3x is for the 3D workload
TIME_TARGETS: dict[str, dict[str, float]] = {
    **{name: {"3d": 1.3} for name in ["dice", "jaccard", "generalized_dice", "tversky"]},
    "balanced_ce": {"2d": 1.3, "3d": 1.3},
    **{name: {"2d": 2.0, "3d": 2.0} for name in ["focal", "focal[sigmoid]"]},
    **{name: {"2d": 2.5, "3d": 2.5} for name in ["combo", "exp_log", "unified_focal", "dice_focal"]},
}
DEFAULT_TARGET = 5.0
#: peak extra memory target on the 3D workload, as a multiple of cross-entropy's
PEAK_TARGET = 3.0


def time_target(loss: str, workload: str) -> float:
    return TIME_TARGETS.get(loss, {}).get(workload, DEFAULT_TARGET)


def targets_table(paths: list[str]) -> pd.DataFrame:
    """One row per loss of ``--json`` files (e.g. one per workload): ``x_ce`` per workload next to issue 13's
    target, the 3D peak, and whether each is met (``time_met`` on every workload measured, ``peak_met`` on 3d)."""
    rows = pd.concat([pd.DataFrame(json.loads(Path(path).read_text())["rows"]) for path in paths])
    wide = rows.pivot(index="loss", columns="workload", values=["x_ce", "x_ce_peak", "x_ref"])
    table = pd.DataFrame(index=wide.index)
    met = pd.DataFrame(index=wide.index)
    for workload in sorted(rows["workload"].unique()):
        x_ce = wide[("x_ce", workload)]
        table[f"x_ce {workload}"] = x_ce
        table[f"target {workload}"] = [time_target(name, workload) for name in table.index]
        table[f"peak {workload}"] = wide[("x_ce_peak", workload)]
        table[f"x_ref {workload}"] = wide[("x_ref", workload)]
        met[workload] = (x_ce <= table[f"target {workload}"]).where(x_ce.notna())
    table["time_met"] = met.all(axis=1)
    peak_3d = table.get("peak 3d", pd.Series(float("nan"), index=table.index))
    table["peak_met"] = (peak_3d <= PEAK_TARGET).where(peak_3d.notna(), None)
    return table


#: glibc settings that keep freed memory in the process (no mmap for large blocks, no trimming), so that every step
#: runs on warm pages, as under a caching allocator (CUDA's, jemalloc). glibc's default maps each tensor above 32 MB
#: afresh, and whether a step pays those page faults depends on what ran before: W3's cross-entropy took 81-224 ms
#: of CPU time within one run, 83-85 ms with these settings.
CACHED_HEAP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def cached_heap_env(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-run this script in with ``CACHED_HEAP`` (glibc reads it at start), or ``None`` when
    it is already set or the platform is not Linux."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if CACHED_HEAP in tunables or platform.system() != "Linux":
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, CACHED_HEAP]))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument(
        "--losses",
        nargs="+",
        help=f"registered names or {', '.join(VARIANTS)} (default: every loss that needs no network, and those)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (CPU only; shared machine)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--markdown", help="also write the tables to this markdown file")
    parser.add_argument("--json", help="also write the rows to this JSON file (for --compare)")
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two --json files and exit")
    parser.add_argument("--tolerance", type=float, default=0.10, help="--compare: flag rows slower by more")
    parser.add_argument(
        "--targets", nargs="+", metavar="JSON", help="issue 13's targets against --json files, and exit"
    )
    parser.add_argument(
        "--section",
        nargs="+",
        choices=["losses", "transforms"],
        default=["losses"],
        help="losses: every loss on the workloads; transforms: DistanceMap vs scipy and MONAI (bench_transforms.py)",
    )
    parser.add_argument(
        "--heap",
        choices=["cached", "default"],
        default="cached",
        help="cached: re-run under CACHED_HEAP (steady page use, the default); default: glibc's own settings",
    )
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.compare:
        table, slower = compare(*args.compare, tolerance=args.tolerance)
        print(table.round(3).to_markdown())
        print(f"\n{int(table['slower'].sum())} row(s) more than {args.tolerance:.0%} slower (x_ce)")
        return 1 if slower else 0
    if args.targets:
        print(targets_table(args.targets).round(2).to_markdown())
        return 0
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures the host's CPU time: use the wall clock on a GPU")
    torch.set_num_threads(args.threads)
    names = args.losses or [i.name for i in list_losses() if i.name not in NEEDS_MORE - OWN_INPUTS] + list(VARIANTS)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if args.device.startswith("cuda"):
        machine = torch.cuda.get_device_name(torch.device(args.device))
    machine += f", torch {torch.__version__}"
    out = [f"machine: {machine}; repeats: {args.repeats} (median of forward+backward, {args.clock} clock)"]
    records = []
    for w in args.workload if "losses" in args.section else []:
        table = bench_workload(
            WORKLOADS[w], names, args.repeats, args.device, memory=not args.no_memory, clock=args.clock
        )
        text = f"\n### {w} logits {WORKLOADS[w]} float32\n\n" + table.round(2).to_markdown()
        print(text, flush=True)
        out.append(text)
        rows = table.reset_index().astype(object).where(table.reset_index().notna(), None)  # NaN -> JSON null
        records += [{"workload": w, **row} for row in rows.to_dict("records")]
    if "transforms" in args.section:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_transforms import bench_cache_dataset, bench_distance_maps

        for title, table in (
            ("distance maps, 160x160x48, 14 labels", bench_distance_maps(args.repeats)),
            ("CacheDataset first pass, synthetic BTCV", bench_cache_dataset()),
        ):
            text = f"\n### {title}\n\n" + table.round(3).to_markdown()
            print(text, flush=True)
            out.append(text)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(out) + "\n")
    if args.json:
        meta = {
            "machine": machine,
            "repeats": args.repeats,
            "device": args.device,
            "clock": args.clock,
            "heap": "cached" if CACHED_HEAP in os.environ.get("GLIBC_TUNABLES", "") else "default",
            "date": str(date.today()),
        }
        write_json(args.json, {"meta": meta, "rows": records})
    return 0


if __name__ == "__main__":
    env = cached_heap_env(dict(os.environ)) if build_parser().parse_args().heap == "cached" else None
    if env is not None:
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    sys.exit(main())
