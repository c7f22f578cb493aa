"""Run medseg's MONAI bundles from Python or the ``medseg`` command: train with a loss overlay, infer, evaluate.

Each function calls ``monai.bundle.run`` with the bundle's own config files, so
``python -m monai.bundle run --config_file "['bundles/<b>/configs/train.json','configs/losses/<loss>.json']"``
does the same thing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai.bundle import run

from medseg.console import UserError

REPO = Path(__file__).resolve().parents[1]
#: synapse_unet3d at CPU size (demo, tiny study grid): 48² synthetic volumes resampled to 8 × 8 × 16 mm voxels,
#: 32 × 32 × 16 patches, a 3-level UNet, no Dice on the training batches (a CPU cost no result reads).
CPU_UNET3D = {
    "max_epochs": 120,
    "val_interval": 40,
    "num_workers": 0,
    "batch_size": 2,
    "num_samples": 2,
    "learning_rate": 3e-3,
    "roi_size": [32, 32, 16],
    "pixdim": [8.0, 8.0, 16.0],
    "network_def#channels": [8, 16, 32],
    "network_def#strides": [2, 2],
    "network_def#num_res_units": 0,
    "train#trainer#key_train_metric": "$None",
    "train#trainer#postprocessing": "$None",
}
#: ``medseg demo``'s schedule: DEMO_EPOCHS epochs of DEMO_ITERATIONS iterations (Ignite's ``epoch_length``; the
#: data loader restarts within an epoch): 480 iterations, twice the 120 two-iteration epochs the 4 training cases
#: used to get, with a tenth of the per-epoch work (checkpoints, log lines). docs/runtimes.md has the measured time.
DEMO_EPOCHS, DEMO_ITERATIONS = 12, 40
BUNDLES = REPO / "bundles"
LOSS_OVERLAYS = REPO / "configs" / "losses"


def bundle_configs(bundle: str) -> Path:
    """The ``configs`` folder of bundle ``bundle`` (a name under bundles/ or a path)."""
    folder = Path(bundle) if Path(bundle).is_dir() else BUNDLES / bundle
    configs = folder / "configs"
    if not (configs / "train.json").is_file():
        known = sorted(p.name for p in BUNDLES.glob("*") if (p / "configs" / "train.json").is_file())
        raise UserError(f"no bundle {bundle!r} (looked in {configs})", hint=f"bundles: {', '.join(known)}")
    return configs


def loss_overlay(loss: str | Path) -> Path:
    """The config overlay that selects ``loss``: a registered name or an explicit path to an existing file.

    A name (no path separator, no file suffix: ``dice_ce``, ``ce+focal``) is ``configs/losses/<name>.json`` and
    never resolves outside that folder; anything written as a path (``./mine.json``, ``/data/x.yaml``) must be an
    existing file. Raises :class:`~medseg.console.UserError` otherwise, with the closest names as a hint.
    """
    text = str(loss)
    names = sorted(p.stem for p in LOSS_OVERLAYS.glob("*.json"))
    if isinstance(loss, Path) or any(sep and sep in text for sep in (os.sep, os.altsep, "/")) or Path(text).suffix:
        if not Path(text).expanduser().is_file():
            hint = "a loss is a name from configs/losses/ (e.g. dice_ce) or the path of an existing overlay file"
            raise UserError(f"no loss overlay file {text}", hint=hint)
        return Path(text).expanduser()
    if text not in names:
        import difflib

        close = difflib.get_close_matches(text, names, n=4, cutoff=0.5)
        hint = (f"did you mean {', '.join(close)}? " if close else "") + f"{len(names)} names in configs/losses/"
        raise UserError(f"no loss overlay {text!r}", hint=hint + "; a path to your own overlay file works too")
    return LOSS_OVERLAYS / f"{text}.json"


def logging_file(configs: Path) -> str | bool:
    """The bundle's ``logging.conf``, or ``False`` (leave logging alone) when the program set up logging itself.

    Like :func:`logging.basicConfig`: a program whose root logger has handlers (the ``medseg`` command, a
    script, pytest) keeps its set-up; a bare ``monai.bundle``-style call gets the bundle's.
    """
    import logging

    return False if logging.getLogger().handlers else str(configs / "logging.conf")


def train_folder(
    bundle: str, loss: str | None = None, bundle_root: str | Path | None = None, fold: int | None = None
) -> Path:
    """``bundle_root``, or by default ``runs/<bundle>-<loss>[-fold<k>]`` (the bundle's ``loss_name`` when no loss is
    given)."""
    if bundle_root is not None:
        return Path(bundle_root)
    from medseg.runs import default_run_folder

    if loss is None:
        loss = json.loads((bundle_configs(bundle) / "train.json").read_text()).get("loss_name", "default")
    return default_run_folder(bundle, loss, fold)


def train(bundle: str, loss: str | None = None, bundle_root: str | Path | None = None, **overrides: Any) -> Path:
    """Train ``bundle`` with ``loss`` (its overlay), writing models and logs under ``bundle_root``.

    ``bundle_root`` defaults to :func:`train_folder`'s ``runs/<bundle>-<loss>[-fold<k>]``. The bundle locks that
    folder for the run and resumes only a run of the same config there (``resume=False`` starts afresh): see
    :mod:`medseg.runs`. Returns the folder.
    """
    configs = bundle_configs(bundle)
    root = train_folder(bundle, loss, bundle_root, overrides.get("fold"))
    files = [str(configs / "train.json")] + ([str(loss_overlay(loss))] if loss else [])
    run(config_file=files, logging_file=logging_file(configs), bundle_root=str(root), **overrides)
    return root


def infer(bundle: str, bundle_root: str | Path, **overrides: Any) -> None:
    """Sliding-window inference with the bundle's ``models/model.pt``; predictions go to ``output_dir``."""
    configs = bundle_configs(bundle)
    files = str(configs / "inference.json")
    run(config_file=files, logging_file=logging_file(configs), bundle_root=str(bundle_root), **overrides)


def demo(
    out: str | Path = "medseg_demo",
    loss: str = "dice_ce",
    epochs: int = DEMO_EPOCHS,
    cases: int = 8,
    size: int = 48,
    seed: int = 0,
    iterations: int = DEMO_ITERATIONS,
):
    """The README's main job: synthetic BTCV → train ``synapse_unet3d`` on CPU → infer → per-organ table.

    Checks ``loss`` first (nothing is written for a wrong name), writes synthetic data in the raw BTCV layout,
    trains a small 3D UNet with ``loss`` for ``epochs`` epochs of ``iterations`` iterations on one torch thread
    (the model kept is the best on the validation case), predicts the test cases with sliding-window inference
    (NIfTI in the input's grid) and scores them in mm (``clinical`` convention). Returns the per-organ table.
    """
    import logging

    from medseg.data.synthetic import make_synapse
    from medseg.demo import torch_threads

    loss_overlay(loss)
    out = Path(out)
    log = logging.getLogger("medseg.demo")
    log.info("writing %d synthetic BTCV cases (%d² voxels in-plane) to %s", cases, size, out / "data")
    data = make_synapse(out / "data", layout="btcv", cases=cases, size=size, seed=seed, datalist=True)
    run_size = {**CPU_UNET3D, "max_epochs": epochs, "val_interval": max(epochs // 3, 1)}
    run_size["train#trainer#epoch_length"] = iterations
    log.info(
        "training synapse_unet3d with %s: %d epochs of %d iterations, in %s", loss, epochs, iterations, out / "run"
    )
    inference_ids = ("roi_size", "pixdim", "network_def#channels", "network_def#strides", "network_def#num_res_units")
    small = {k: CPU_UNET3D[k] for k in inference_ids}
    with torch_threads(1):
        train("synapse_unet3d", loss, out / "run", dataset_dir=str(data), resume=False, seed=seed, **run_size)
        log.info("predicting and scoring the test cases")
        infer("synapse_unet3d", out / "run", dataset_dir=str(data), output_dir=str(out / "predictions"), **small)
    table = score_btcv_predictions(out / "predictions", data)
    partial = out / "metrics.csv.partial"
    table.to_csv(partial, index=False)
    partial.replace(out / "metrics.csv")
    return table.groupby("structure", sort=False)[["dice", "hd95_mm", "assd_mm", "nsd"]].mean()


def synapse_reference(label_path: str | Path):
    """A raw BTCV label file in synapse_unet3d's labels (its ``label_mapping``) and its NIfTI image.

    Values outside BTCV's 0..13 raise, naming the file (:mod:`medseg.metrics.labels`).
    """
    import nibabel as nib
    import numpy as np

    from medseg.metrics.labels import bundle_label_space, check_values, present_values

    space = bundle_label_space("synapse_unet3d")
    image = nib.load(label_path)
    raw = np.asarray(image.dataobj).astype(np.int64)
    check_values(present_values(raw), space.allowed_raw, label_path, "reference")
    return space.map_reference(raw), image


def score_btcv_predictions(pred_dir: str | Path, dataset_dir: str | Path, convention: str = "clinical"):
    """Score ``<pred_dir>/<image>_seg.nii.gz`` against the BTCV test labels, per case and Synapse organ, in mm.

    The code of ``medseg evaluate --labels synapse_unet3d`` (:func:`medseg.metrics.evaluate.evaluate_pairs`):
    files read whole, values, grids and label mapping checked the same way, so the two cannot disagree. Returns
    its per-case table (``case`` = the image name, e.g. ``img0001``; ``structure``; Dice, IoU, HD, HD95, ASSD,
    NSD, volumes). A missing prediction raises, naming the file.
    """
    from medseg.data.btcv import btcv_datalist
    from medseg.metrics.evaluate import CasePair, evaluate_pairs
    from medseg.metrics.labels import bundle_label_space

    pairs = []
    for entry in btcv_datalist(dataset_dir, "test"):
        case = Path(entry["image"]).name.split(".")[0]
        pred_path = Path(pred_dir) / f"{case}_seg.nii.gz"
        if not pred_path.is_file():
            raise FileNotFoundError(f"no prediction {pred_path} for test case {entry['image']}")
        pairs.append(CasePair(case, pred_path, Path(entry["label"])))
    space = bundle_label_space("synapse_unet3d")
    return evaluate_pairs(pairs, space, convention, ref_space="raw", progress=False).table
