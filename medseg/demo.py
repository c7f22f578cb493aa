"""A quick look at the losses: train a small MONAI UNet on synthetic 2D shapes with each loss, compare Dice.

``medseg shapes`` runs it (``medseg shapes --help`` lists the options; docs/runtimes.md has its measured time).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator

import pandas as pd
import torch
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from tqdm import tqdm

from medseg.losses import get_loss, loss_info

DEFAULT_LOSSES = ("ce", "dice", "dice_ce", "focal", "tversky", "focal_tversky")
NUM_CLASSES = 3  # background, a large disc, a small square


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch on ``n`` threads, then restore the previous count.

    The demos' tensors are small: one thread does them faster than a pool, and on a busy machine a pool's
    threads spin while they wait for each other (several times the CPU time for the same result).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def synthetic_shapes(n: int, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images ``(n, 1, size, size)`` with a large disc (label 1) and a small square (label 2)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, labels = [], []
    for _ in range(n):
        label = torch.zeros(size, size, dtype=torch.long)
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=g).tolist()
        radius = int(torch.randint(size // 6, size // 4, (1,), generator=g))
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1
        sy, sx = torch.randint(2, size - 6, (2,), generator=g).tolist()
        label[sy : sy + 4, sx : sx + 4] = 2
        image = label.float() * 0.6 + 0.35 * torch.randn(size, size, generator=g)
        images.append(image[None])
        labels.append(label[None])
    return torch.stack(images), torch.stack(labels)


def build_demo_loss(name: str) -> torch.nn.Module:
    """The loss on logits: ``softmax=True`` (``use_softmax=True`` for MONAI's focal flag) where the loss has the flag;
    losses that read maps or features are left to the bundles (they need a data pipeline)."""
    info = loss_info(name)
    if info.aux_keys or "checkpoint" in inspect.signature(info.cls.__init__).parameters:
        raise ValueError(f"loss {name!r} reads {list(info.aux_keys) or 'a checkpoint'}: try it with a bundle")
    parameters = inspect.signature(info.cls.__init__).parameters
    kwargs = {flag: True for flag in ("softmax", "use_softmax") if flag in parameters}
    if name == "gwdl":
        kwargs["dist_matrix"] = torch.ones(NUM_CLASSES, NUM_CLASSES) - torch.eye(NUM_CLASSES)
    return get_loss(name, **kwargs)


def check_demo_losses(names) -> None:
    """Raise one :class:`~medseg.console.UserError` naming every loss in ``names`` the demo cannot build."""
    from medseg.console import UserError

    problems = []
    for name in names:
        try:
            build_demo_loss(name)
        except (ValueError, KeyError, TypeError) as err:
            problems.append(f"{name}: {str(err).split(' (registered')[0]}")
    if problems:
        raise UserError("cannot run " + "; ".join(problems), hint="medseg losses lists the registered losses")


def train_one(loss_name: str, steps: int, seed: int, data, val, bar: tqdm | None = None) -> dict:
    """Train a small UNet with ``loss_name`` for ``steps`` steps; return validation Dice per class.

    ``bar``: a progress bar to advance by one per step (the command's one bar over all losses).
    """
    torch.manual_seed(seed)
    net = UNet(2, 1, NUM_CLASSES, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    loss = build_demo_loss(loss_name)
    params = list(net.parameters()) + list(loss.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    images, labels = data
    start = time.perf_counter()
    if bar is not None:
        bar.set_postfix_str(loss_name, refresh=False)
    for step in range(steps):
        idx = torch.arange(step * 8, step * 8 + 8) % len(images)
        opt.zero_grad()
        value = loss(net(images[idx]), labels[idx])
        value.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        pred = net(val[0]).argmax(1, keepdim=True)
    metric = DiceMetric(include_background=False, reduction="mean_batch")
    metric(one_hot(pred, NUM_CLASSES), one_hot(val[1], NUM_CLASSES))
    dice = metric.aggregate()
    return {
        "loss": loss_name,
        "family": loss_info(loss_name).family,
        "dice_disc": float(dice[0]),
        "dice_square": float(dice[1]),
        "final_loss": float(value.detach()),
        "seconds": seconds,
    }


def run_demo(losses=DEFAULT_LOSSES, steps: int = 300, seed: int = 0) -> pd.DataFrame:
    """Train with each loss and return one row per loss (validation Dice per structure, time).

    Every loss is built first (:func:`check_demo_losses`), so a wrong name stops the run before any training.
    """
    check_demo_losses(losses)
    data = synthetic_shapes(128, seed=seed)
    val = synthetic_shapes(32, seed=seed + 1)
    with torch_threads(1), tqdm(total=len(losses) * steps, desc="training", unit="step") as bar:
        rows = [train_one(name, steps, seed, data, val, bar) for name in losses]
    return pd.DataFrame(rows).set_index("loss")
