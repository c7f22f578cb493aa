"""Forward+backward time of every medseg loss, side by side with torch's cross-entropy and MONAI's equivalent.

Each loss is timed interleaved with the cross-entropy floor and with MONAI's (or kornia's) equivalent in the same
run, so that ratios compare like with like on a busy machine. Prints a table of medians and ratios.

    python scripts/bench_losses.py                          # both workloads, every loss, CPU
    python scripts/bench_losses.py --workload 2d --losses dice focal lovasz --repeats 7
    python scripts/bench_losses.py --device cuda --markdown docs/bench_gpu.md
"""

from __future__ import annotations

import argparse
import inspect
import platform
import statistics
import time
from collections.abc import Callable

import monai.losses as ml
import pandas as pd
import torch
from tqdm import tqdm

from medseg.losses import get_loss, list_losses, loss_info

WORKLOADS = {"2d": (8, 9, 224, 224), "3d": (2, 14, 96, 96, 96)}


def _gwdl_matrix(c: int) -> torch.Tensor:
    m = torch.ones(c, c) - torch.eye(c)
    return m


#: MONAI (or kornia) equivalents: loss name -> factory(num_classes) returning a module called as f(logits, labels)
EQUIVALENTS: dict[str, Callable[[int], Callable]] = {
    "dice": lambda c: ml.DiceLoss(to_onehot_y=True, softmax=True),
    "jaccard": lambda c: ml.DiceLoss(to_onehot_y=True, softmax=True, jaccard=True),
    "generalized_dice": lambda c: ml.GeneralizedDiceLoss(to_onehot_y=True, softmax=True),
    "gwdl": lambda c: ml.GeneralizedWassersteinDiceLoss(dist_matrix=_gwdl_matrix(c)),
    "tversky": lambda c: ml.TverskyLoss(to_onehot_y=True, softmax=True),
    "asym_similarity": lambda c: ml.TverskyLoss(to_onehot_y=True, softmax=True, alpha=1 / 3.25, beta=2.25 / 3.25),
    "focal": lambda c: ml.FocalLoss(to_onehot_y=True, use_softmax=True),
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


def _kornia_equivalents() -> dict[str, Callable[[int], Callable]]:
    try:
        import kornia.losses as kl
    except ImportError:
        return {}
    return {
        "lovasz": lambda c: _named("kornia.LovaszSoftmaxLoss", lambda x, y: kl.lovasz_softmax_loss(x, y[:, 0])),
        "hausdorff_er": lambda c: _named("kornia.HausdorffERLoss", kl.HausdorffERLoss()),
    }


def loss_kwargs(name: str, num_classes: int) -> dict:
    """Logits in: ``softmax=True`` where the loss has the flag (the others apply their own activation)."""
    if name == "gwdl":
        return {"dist_matrix": _gwdl_matrix(num_classes)}
    accepts = inspect.signature(loss_info(name).cls.__init__).parameters
    return {"softmax": True} if "softmax" in accepts else {}


def time_step(fn: Callable, logits: torch.Tensor, labels: torch.Tensor, aux: dict) -> float:
    """Seconds for one forward+backward."""
    logits.grad = None
    if logits.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(logits, labels, **aux).backward()
    if logits.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_workload(shape, names, repeats: int, device: str) -> pd.DataFrame:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g).to(device).requires_grad_(True)
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g).to(device)
    floor = torch.nn.CrossEntropyLoss()

    def ce_floor(x, y):
        return floor(x, y[:, 0])

    equivalents = {**EQUIVALENTS, **_kornia_equivalents()}
    rows = []
    for name in tqdm(names, desc=f"{'x'.join(map(str, shape))}", leave=False):
        ours = get_loss(name, **loss_kwargs(name, shape[1])).to(device)
        aux = {key: torch.rand(shape, device=device) for key in ours.aux_keys}
        other = equivalents[name](shape[1]) if name in equivalents else None
        times: dict[str, list[float]] = {"ce": [], "ours": [], "ref": []}
        if other is not None:
            try:  # kornia's Lovász is 2D only, for example: then there is no reference on this workload
                time_step(other, logits, labels, {})
            except (RuntimeError, ValueError):
                other = None
        for i in range(repeats + 1):  # the first round warms up and is dropped
            t = {"ce": time_step(ce_floor, logits, labels, {}), "ours": time_step(ours, logits, labels, aux)}
            if other is not None:
                t["ref"] = time_step(other, logits, labels, {})
            if i:
                for k, v in t.items():
                    times[k].append(v)
        med = {k: statistics.median(v) for k, v in times.items() if v}
        rows.append(
            {
                "loss": name,
                "ms": 1e3 * med["ours"],
                "ce_ms": 1e3 * med["ce"],
                "x_ce": med["ours"] / med["ce"],
                "ref": reference_label(other),
                "ref_ms": 1e3 * med["ref"] if "ref" in med else float("nan"),
                "x_ref": med["ours"] / med["ref"] if "ref" in med else float("nan"),
            }
        )
    return pd.DataFrame(rows).set_index("loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--losses", nargs="+", help="registered names (default: every loss that needs no network)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--markdown", help="also write the tables to this markdown file")
    parser.add_argument(
        "--section",
        nargs="+",
        choices=["losses", "transforms"],
        default=["losses"],
        help="losses: every loss on the workloads; transforms: DistanceMapd vs MONAI and scipy (bench_transforms.py)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # the losses that need only logits, labels and a map (not a network's features, a checkpoint or C·K channels)
    skip = {"conditional_boundary", "inverse_form", "boundary_aware"}
    names = args.losses or [i.name for i in list_losses() if i.name not in skip]
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    out = [f"machine: {machine}; repeats: {args.repeats} (median of forward+backward)"]
    for w in args.workload if "losses" in args.section else []:
        table = bench_workload(WORKLOADS[w], names, args.repeats, args.device)
        text = f"\n### {w} logits {WORKLOADS[w]} float32\n\n" + table.round(2).to_markdown()
        print(text, flush=True)
        out.append(text)
    if "transforms" in args.section:
        from bench_transforms import bench_cache_dataset, bench_distance_maps

        for title, table in (
            ("signed distance maps", bench_distance_maps(args.repeats)),
            ("CacheDataset build, 96^3 label maps, 14 classes", bench_cache_dataset()),
        ):
            text = f"\n### {title}\n\n" + table.round(3).to_markdown()
            print(text, flush=True)
            out.append(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
