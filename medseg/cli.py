"""The ``medseg`` command line: ``demo``, ``plan``, ``train``, ``evaluate``, ``shapes``, ``compare``, ``losses``.

Each command checks its names and paths before it writes or trains anything. A mistake is reported in one line
plus a hint (exit status 2); a run that fails reports the error MONAI wrapped, in one line (exit status 1).
``--debug`` adds the traceback; ``--verbose`` adds MONAI's per-iteration logs to the quiet default (progress
bars, one line per epoch, the result).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medseg.console import UserError, console, report_error
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
    from medseg.demo import check_demo_losses, run_demo

    check_demo_losses(args.losses)
    table = run_demo(args.losses, steps=args.steps, seed=args.seed)
    print(table.round(3).to_string())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from medseg.bundles import DEMO_EPOCHS, demo, loss_overlay

    loss_overlay(args.loss)  # a wrong name stops here, before any data is written
    _check_output_folder(args.out, "--out")
    epochs = args.epochs or DEMO_EPOCHS
    table = demo(args.out, loss=args.loss, epochs=epochs, seed=args.seed)
    print(f"\nsynapse_unet3d, {epochs} epochs with '{args.loss}' on synthetic BTCV; test cases, mean per organ:")
    print(table.rename_axis(None).round(3).to_string())
    print(f"\nper-case rows: {args.out}/metrics.csv; model and logs: {args.out}/run")
    return 0


def _train(args: argparse.Namespace) -> int:
    from medseg.bundles import bundle_configs, loss_overlay, train, train_folder

    bundle_configs(args.bundle)
    if args.loss:
        loss_overlay(args.loss)
    overrides = dict(_parse_override(o) for o in args.override)
    if args.dataset_dir:
        if not Path(args.dataset_dir).is_dir():
            raise UserError(f"--dataset-dir {args.dataset_dir} is not a folder", hint="give the dataset's root folder")
        overrides["dataset_dir"] = args.dataset_dir
    root = train_folder(args.bundle, args.loss, args.bundle_root, args.fold)
    _check_output_folder(root, "--bundle-root")
    if args.max_epochs is not None:
        overrides["max_epochs"] = args.max_epochs
    if args.no_resume:
        overrides["resume"] = False
    if args.fold is not None:
        overrides["fold"] = args.fold
    resume = "a rerun resumes it" if overrides.get("resume", True) else "starting afresh"
    print(f"run folder: {root} ({resume})")
    train(args.bundle, args.loss, root, **overrides)
    return 0


def _check_output_folder(path: str | Path, option: str) -> None:
    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{option} {path} is a file, not a folder", hint=f"give {option} a folder to write into")


def _parse_override(text: str) -> tuple[str, object]:
    import json

    if "=" not in text:
        raise UserError(f"--override takes id=value, got {text!r}", hint="e.g. --override max_epochs=5 batch_size=4")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _plan(args: argparse.Namespace) -> int:
    from medseg.planning import plan_dataset, plan_summary

    if not Path(args.dataset).is_dir():
        raise UserError(f"dataset {args.dataset} is not a folder", hint="give an nnU-Net v2 raw or MSD dataset folder")
    _check_output_folder(Path(args.out).parent, "--out")
    try:
        plan = plan_dataset(args.dataset, args.out, args.gpu_memory, args.cpu_memory, args.max_cases, seed=args.seed)
    except (ValueError, FileNotFoundError) as err:  # the dataset breaks a rule of its layout: the user's to fix
        raise UserError(str(err), hint="docs/own_dataset.md describes both layouts") from err
    print(plan_summary(plan))
    print(
        f"\nwritten: {args.out}; train with: medseg train generic_3d --dataset-dir {args.dataset} "
        f"--override plan_file={args.out}"
    )
    return 0


def _losses(args: argparse.Namespace) -> int:
    table = losses_table()
    if args.family:
        table = table[table.family == args.family]
    print(table.to_string(index=False))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _global_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """``--debug`` and ``--verbose``, wherever they stand (``medseg --debug demo`` or ``medseg demo --debug``)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_known_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The ``medseg`` parser (``compare`` parses its own arguments: ``medseg compare --help``)."""
    from medseg.demo import DEFAULT_LOSSES

    parser = argparse.ArgumentParser(prog="medseg", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="on an error, also print the traceback")
    parser.add_argument("--verbose", action="store_true", help="MONAI's per-iteration logs and every warning")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="synthetic BTCV -> train synapse_unet3d on CPU -> infer -> per-organ table")
    demo.add_argument("--loss", default="dice_ce", help="a loss overlay name (configs/losses/<loss>.json) or file")
    demo.add_argument("--epochs", type=_positive_int, help="training epochs (default: the demo's own)")
    demo.add_argument("--out", default="medseg_demo", help="folder for data, model, predictions and metrics")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    train = sub.add_parser("train", help="train a bundle with a loss overlay (monai.bundle.run underneath)")
    train.add_argument("bundle", help="synapse_unet3d, synapse_transunet, cityscapes_2d or a bundle folder")
    train.add_argument("--loss", help="a loss overlay name (configs/losses/<loss>.json) or file; default: the bundle's")
    train.add_argument("--dataset-dir")
    train.add_argument("--bundle-root", help="the run folder: models/, eval/ (default: runs/<bundle>-<loss>[-fold<k>])")
    train.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh; the earlier run's checkpoints and logs move to models/ and eval/replaced-<time>/",
    )
    train.add_argument("--max-epochs", type=_positive_int)
    train.add_argument("--fold", type=int, help="generic_3d: cross-validation fold 0..4 instead of the seeded split")
    train.add_argument("--override", nargs="*", default=[], help="config ids, e.g. batch_size=4 roi_size=[64,64,64]")
    train.set_defaults(func=_train)
    from medseg.metrics.evaluate import build_parser as evaluate_parser
    from medseg.metrics.evaluate import run

    evaluate = sub.add_parser("evaluate", parents=[evaluate_parser()], add_help=False, help="score predictions")
    evaluate.set_defaults(func=run)
    shapes = sub.add_parser("shapes", help="a quick look: a 2D UNet on synthetic shapes with several losses")
    shapes.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES), help="registered loss names")
    shapes.add_argument("--steps", type=_positive_int, default=300, help="training steps per loss")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.set_defaults(func=_shapes)
    plan = sub.add_parser("plan", help="fingerprint an nnU-Net v2 raw or MSD dataset and write its plan.json")
    plan.add_argument("dataset", help="the dataset folder (holding dataset.json)")
    plan.add_argument("--out", default="plan.json", help="the plan file to write (default: plan.json)")
    plan.add_argument("--gpu-memory", type=float, default=8.0, help="GPU memory budget in GB (default 8)")
    plan.add_argument("--cpu-memory", type=float, default=0.5, help="memory budget of the cpu configuration, GB")
    plan.add_argument("--max-cases", type=_positive_int, default=50, help="cases sampled for intensities (50)")
    plan.add_argument("--seed", type=int, default=1234, help="seed of the case and voxel sampling")
    plan.set_defaults(func=_plan)
    sub.add_parser("compare", help="run a loss-by-network grid and write the survey's tables and plots")
    losses = sub.add_parser("losses", help="list the registered losses")
    losses.add_argument("--family", choices=["pixel", "region", "boundary", "compound", "extra"])
    losses.set_defaults(func=_losses)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (0, 1 when the run failed, 2 for a mistake in the request)."""
    options, argv = _global_options(sys.argv[1:] if argv is None else list(argv))
    command = argv[0] if argv else ""
    with console(verbose=options.verbose or options.debug):
        try:
            if command == "compare":
                from medseg.study import main as compare

                return compare(argv[1:])
            args = build_parser().parse_args(argv)
            return args.func(args)
        except (SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # every error is reported once, here
            return report_error(exc, command, debug=options.debug)


if __name__ == "__main__":
    sys.exit(main())
