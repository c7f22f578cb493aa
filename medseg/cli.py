"""The ``medseg`` command line: ``medseg demo``, ``medseg losses``."""

from __future__ import annotations

import argparse
import sys

from medseg.losses import list_losses


def losses_table():
    """The registry as a pandas table (name, class, family, reference, aux keys)."""
    import pandas as pd

    rows = [
        {
            "name": i.name,
            "class": i.cls.__name__,
            "family": i.family,
            "reference": i.reference,
            "aux": ", ".join(i.aux_keys),
        }
        for i in list_losses()
    ]
    return pd.DataFrame(rows)


def _shapes(args: argparse.Namespace) -> int:
    from medseg.demo import run_demo

    table = run_demo(args.losses, steps=args.steps, seed=args.seed)
    print(table.round(3).to_string())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from medseg.bundles import demo

    table = demo(args.out, loss=args.loss, epochs=args.epochs, seed=args.seed)
    print(f"\nsynapse_unet3d, {args.epochs} epochs with '{args.loss}' on synthetic BTCV; test cases, mean per organ:")
    print(table.round(3).to_string())
    print(f"\nper-case rows: {args.out}/metrics.csv; model and logs: {args.out}/run")
    return 0


def _train(args: argparse.Namespace) -> int:
    from medseg.bundles import train, train_folder

    overrides = dict(_parse_override(o) for o in args.override)
    if args.dataset_dir:
        overrides["dataset_dir"] = args.dataset_dir
    if args.max_epochs is not None:
        overrides["max_epochs"] = args.max_epochs
    if args.no_resume:
        overrides["resume"] = False
    root = train_folder(args.bundle, args.loss, args.bundle_root)
    resume = "a rerun resumes it" if overrides.get("resume", True) else "starting afresh"
    print(f"run folder: {root} ({resume})")
    train(args.bundle, args.loss, root, **overrides)
    return 0


def _parse_override(text: str) -> tuple[str, object]:
    import json

    if "=" not in text:
        raise SystemExit(f"--override takes id=value (e.g. max_epochs=5), got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _losses(args: argparse.Namespace) -> int:
    table = losses_table()
    if args.family:
        table = table[table.family == args.family]
    print(table.to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    from medseg.demo import DEFAULT_LOSSES

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:  # the study runner parses its own arguments (medseg compare --help)
        from medseg.study import main as compare

        return compare(argv[1:])

    parser = argparse.ArgumentParser(prog="medseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="synthetic BTCV -> train synapse_unet3d on CPU -> infer -> per-organ table")
    demo.add_argument("--loss", default="dice_ce", help="a loss overlay name (configs/losses/<loss>.json)")
    demo.add_argument("--epochs", type=int, default=120)
    demo.add_argument("--out", default="medseg_demo", help="folder for data, model, predictions and metrics")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    train = sub.add_parser("train", help="train a bundle with a loss overlay (monai.bundle.run underneath)")
    train.add_argument("bundle", help="synapse_unet3d, synapse_transunet, cityscapes_2d or a bundle folder")
    train.add_argument("--loss", help="a loss overlay name (configs/losses/<loss>.json); default: the bundle's")
    train.add_argument("--dataset-dir")
    train.add_argument("--bundle-root", help="the run folder: models/, eval/ (default: runs/<bundle>-<loss>)")
    train.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh in the run folder; its earlier checkpoints move to models/replaced-<time>/",
    )
    train.add_argument("--max-epochs", type=int)
    train.add_argument("--override", nargs="*", default=[], help="config ids, e.g. batch_size=4 roi_size=[64,64,64]")
    train.set_defaults(func=_train)
    from medseg.metrics.evaluate import build_parser, run

    evaluate = sub.add_parser("evaluate", parents=[build_parser()], add_help=False, help="score predictions")
    evaluate.set_defaults(func=run)
    shapes = sub.add_parser("shapes", help="a one-minute look: a 2D UNet on synthetic shapes with several losses")
    shapes.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES), help="registered loss names")
    shapes.add_argument("--steps", type=int, default=300, help="training steps per loss")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.set_defaults(func=_shapes)
    sub.add_parser("compare", help="run a loss-by-network grid and write the survey's tables and plots")
    losses = sub.add_parser("losses", help="list the registered losses")
    losses.add_argument("--family", choices=["pixel", "region", "boundary", "compound", "extra"])
    losses.set_defaults(func=_losses)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
