"""Write the bundle config overlays of every registered loss under configs/losses/ (``--check``: fail if stale).

Each overlay's file name says what it optimises, and so does its ``loss_name``:

- ``<name>.json``: the loss alone (``loss_weights`` ``{name: 1.0}``);
- ``ce+<name>.json``: 0.5·CE + 0.5·loss, the TransUNet protocol's pairing (0.5·CE + 0.5·Dice) applied to every
  loss; not written for losses that already hold a cross-entropy term (``ce``, ``dice_ce``, ``combo``,
  ``exp_log``, ``unified_focal``).

Both use the paper's recommended hyperparameters and, for losses that read a distance or weight map, add
``DistanceMapd`` to the training transforms (before the first random one; the bundle's ``prepare_batch`` hands the
map to the loss). Use with any bundle:

    python -m monai.bundle run \
        --config_file "['bundles/synapse_unet3d/configs/train.json','configs/losses/ce+tversky.json']"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medseg.losses import list_losses

OUT = Path(__file__).resolve().parents[1] / "configs" / "losses"

#: the papers' recommended hyperparameters (beyond the activation), where they differ from the class defaults
PAPER_KWARGS: dict[str, dict] = {
    "tversky": {"alpha": 0.3, "beta": 0.7},  # Salehi et al. 2017, best F2 on MS lesions
    "focal_tversky": {"alpha": 0.3, "beta": 0.7, "gamma": 4 / 3},  # Abraham & Khan 2019
    "focal": {"gamma": 2.0},  # Lin et al. 2017
    "topk": {"k": 10},  # nnU-Net's TopK10
    "asym_similarity": {"beta": 1.5},  # Hashemi et al. 2018
    "penalty_gdl": {"k": 2.5},
    # all organs equally far from each other and from the background (the paper tunes M per task)
    "gwdl": {"dist_matrix": "$torch.ones(@num_classes, @num_classes) - torch.eye(@num_classes)"},
}
#: keyword arguments that select the softmax over the classes (MONAI's ``softmax``, and ``use_softmax`` of its
#: ``FocalLoss``); a compound's own focal activation (``dice_focal``'s ``focal_softmax``) keeps its default
SOFTMAX_FLAGS = ("softmax", "use_softmax")
#: losses whose network needs other output channels than the classes (boundary_aware: C·K distance bins)
NEEDS_OWN_HEAD = {"boundary_aware"}
#: losses that already hold a cross-entropy term: no ``ce+`` overlay
HOLDS_CE = {"ce", "dice_ce", "combo", "exp_log", "unified_focal"}
#: the weight of CE and of the loss in a ``ce+<name>`` overlay
WITH_CE_WEIGHT = 0.5
#: the DistanceMapd mode that makes each aux map (others compute on the fly or need no map)
MAP_MODES = {
    "boundary": "signed",
    "hausdorff_dt": "unsigned",
    "dpce": "penalty",
    "region_wise": "rrw",
    "boundary_aware": "quantized",
    "unet_weighted_ce": "unet_weight",
}


def overlay(name: str, aux_keys: tuple[str, ...], accepts: set[str], with_ce: bool) -> dict:
    """The overlay of ``name`` alone, or (``with_ce``) of 0.5·CE + 0.5·``name``; ``loss_name`` is its file stem."""
    # multi-class segmentation: every flag that selects the softmax is set (others apply their own activation)
    kwargs: dict = {flag: True for flag in SOFTMAX_FLAGS if flag in accepts}
    kwargs.update(PAPER_KWARGS.get(name, {}))
    if "ignore_index" in accepts:
        kwargs["ignore_index"] = "@ignore_index"
    loss_kwargs = {name: kwargs}
    if with_ce:
        weights = {"ce": WITH_CE_WEIGHT, name: 1.0 - WITH_CE_WEIGHT}
        loss_kwargs["ce"] = {"ignore_index": "@ignore_index"}
    else:
        weights = {name: 1.0}
    loss_name = f"ce+{name}" if with_ce else name
    config: dict = {"loss_name": loss_name, "loss_weights": weights, "loss_kwargs": loss_kwargs}
    if name in MAP_MODES:
        key = aux_keys[0] if aux_keys else "dist"
        config["aux_transforms"] = [
            {
                "_target_": "medseg.transforms.DistanceMapd",
                "keys": "label",
                "mode": MAP_MODES[name],
                "num_classes": "@num_classes",
                "output_key": key,
                "ignore_index": "@ignore_index",
            }
        ]
    return config


def render_all() -> dict[str, str]:
    """File stem → JSON text of every overlay: ``<name>`` for each loss, ``ce+<name>`` for those without CE."""
    import inspect

    out = {}
    for info in list_losses():
        accepts = set(inspect.signature(info.cls.__init__).parameters)
        if "features" in info.aux_keys or "checkpoint" in accepts or info.name in NEEDS_OWN_HEAD:
            continue  # need a network hook, a trained checkpoint or extra output channels: configured by hand
        for with_ce in (False, True) if info.name not in HOLDS_CE else (False,):
            config = overlay(info.name, info.aux_keys, accepts, with_ce)
            out[config["loss_name"]] = json.dumps(config, indent=4) + "\n"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that configs/losses/ is up to date")
    args = parser.parse_args()
    rendered = render_all()
    stale = [
        n for n, text in rendered.items() if not (OUT / f"{n}.json").exists() or (OUT / f"{n}.json").read_text() != text
    ]
    extra = sorted(p.stem for p in OUT.glob("*.json") if p.stem not in rendered)
    if args.check:
        if stale or extra:
            print(f"configs/losses is out of date (stale: {stale}, unknown: {extra}): run scripts/make_loss_configs.py")
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (OUT / f"{name}.json").write_text(text)
    for name in extra:
        (OUT / f"{name}.json").unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
