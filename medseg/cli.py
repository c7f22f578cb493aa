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


def _demo(args: argparse.Namespace) -> int:
    from medseg.demo import run_demo

    table = run_demo(args.losses, steps=args.steps, seed=args.seed)
    print(table.round(3).to_string())
    return 0


def _losses(args: argparse.Namespace) -> int:
    table = losses_table()
    if args.family:
        table = table[table.family == args.family]
    print(table.to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    from medseg.demo import DEFAULT_LOSSES

    parser = argparse.ArgumentParser(prog="medseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small UNet on synthetic shapes with several losses and compare")
    demo.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES), help="registered loss names")
    demo.add_argument("--steps", type=int, default=300, help="training steps per loss")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    losses = sub.add_parser("losses", help="list the registered losses")
    losses.add_argument("--family", choices=["pixel", "region", "boundary", "compound", "extra"])
    losses.set_defaults(func=_losses)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
