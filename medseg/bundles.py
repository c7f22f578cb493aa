"""Run medseg's MONAI bundles from Python or the ``medseg`` command: train with a loss overlay, infer, evaluate.

Each function calls ``monai.bundle.run`` with the bundle's own config files, so
``python -m monai.bundle run --config_file "['bundles/<b>/configs/train.json','configs/losses/<loss>.json']"``
does the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.bundle import run

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
LOSS_OVERLAYS = REPO / "configs" / "losses"


def bundle_configs(bundle: str) -> Path:
    """The ``configs`` folder of bundle ``bundle`` (a name under bundles/ or a path)."""
    folder = Path(bundle) if Path(bundle).is_dir() else BUNDLES / bundle
    configs = folder / "configs"
    if not (configs / "train.json").is_file():
        known = sorted(p.name for p in BUNDLES.glob("*") if (p / "configs" / "train.json").is_file())
        raise ValueError(f"no bundle {bundle!r} (looked in {configs}); bundles: {', '.join(known)}")
    return configs


def loss_overlay(loss: str) -> Path:
    """The config overlay ``configs/losses/<loss>.json`` that selects ``loss``."""
    path = LOSS_OVERLAYS / f"{loss}.json"
    if not path.is_file():
        import difflib

        names = sorted(p.stem for p in LOSS_OVERLAYS.glob("*.json"))
        close = difflib.get_close_matches(loss, names, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"no loss overlay {path.name}{hint} (available: {', '.join(names)})")
    return path


def train(bundle: str, loss: str | None, bundle_root: str | Path, **overrides: Any) -> None:
    """Train ``bundle`` with ``loss`` (its overlay), writing models and logs under ``bundle_root``."""
    configs = bundle_configs(bundle)
    files = [str(configs / "train.json")] + ([str(loss_overlay(loss))] if loss else [])
    run(config_file=files, logging_file=str(configs / "logging.conf"), bundle_root=str(bundle_root), **overrides)


def infer(bundle: str, bundle_root: str | Path, **overrides: Any) -> None:
    """Sliding-window inference with the bundle's ``models/model.pt``; predictions go to ``output_dir``."""
    configs = bundle_configs(bundle)
    run(config_file=str(configs / "inference.json"), bundle_root=str(bundle_root), **overrides)


def demo(
    out: str | Path = "medseg_demo",
    loss: str = "dice_ce",
    epochs: int = 60,
    cases: int = 8,
    size: int = 48,
    seed: int = 0,
):
    """The README's main job: synthetic BTCV → train ``synapse_unet3d`` on CPU → infer → per-organ table.

    Writes synthetic data in the raw BTCV layout, trains a small 3D UNet with ``loss`` for ``epochs`` epochs,
    predicts the test cases with sliding-window inference (NIfTI in the input's grid) and scores them in mm
    (``clinical`` convention). Returns the per-organ summary table (pandas).
    """
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from medseg.data.synapse import DEFAULT_BTCV_TO_SYNAPSE, synapse_organ_names
    from medseg.data.synthetic import make_synapse
    from medseg.metrics import get_convention, score_label_maps

    out = Path(out)
    data = make_synapse(out / "data", layout="btcv", cases=cases, size=size, seed=seed, datalist=True)
    small = {
        "roi_size": [32, 32, 32],
        "pixdim": [4.0, 4.0, 8.0],
        "network_def#channels": [8, 16, 32, 64],
        "network_def#strides": [2, 2, 2],
        "network_def#num_res_units": 1,
    }
    train(
        "synapse_unet3d",
        loss,
        out / "run",
        dataset_dir=str(data),
        max_epochs=epochs,
        val_interval=max(epochs // 2, 1),
        num_workers=0,
        num_samples=2,
        learning_rate=3e-3,
        resume=False,
        seed=seed,
        **small,
    )
    infer("synapse_unet3d", out / "run", dataset_dir=str(data), output_dir=str(out / "predictions"), **small)
    names = synapse_organ_names(DEFAULT_BTCV_TO_SYNAPSE)
    lookup = np.zeros(256, dtype=np.uint8)
    for btcv, synapse in DEFAULT_BTCV_TO_SYNAPSE.items():
        lookup[btcv] = synapse
    rows = []
    for pred_path in sorted((out / "predictions").glob("*_seg.nii.gz")):
        case = pred_path.name.replace("_seg.nii.gz", "")
        ref_img = nib.load(data / "RawData" / "Training" / "label" / f"{case.replace('img', 'label')}.nii.gz")
        ref = lookup[np.asarray(ref_img.dataobj).astype(np.int64)]
        pred = np.asarray(nib.load(pred_path).dataobj).astype(np.int64)
        for row in score_label_maps(pred, ref, ref_img.header.get_zooms()[:3], names, get_convention("clinical")):
            rows.append({"case": case, **row})
    table = pd.DataFrame(rows)
    table.to_csv(out / "metrics.csv", index=False)
    return table.groupby("structure", sort=False)[["dice", "hd95_mm", "assd_mm", "nsd"]].mean()
