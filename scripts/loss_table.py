"""Write the README's loss table from the registry (``--check``: fail if the README is out of date).

python scripts/loss_table.py            # rewrite the table between the markers in README.md
python scripts/loss_table.py --check    # exit 1 if README.md differs from the registry
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg.cli import losses_table

START, END = "<!-- loss-table:start -->", "<!-- loss-table:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def markdown_table() -> str:
    table = losses_table()
    table["name"] = "`" + table["name"] + "`"
    table["class"] = "`" + table["class"] + "`"
    table["aux"] = table["aux"].where(table["aux"] == "", "`" + table["aux"] + "`")
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def render(readme: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"{README} lacks the markers {START} and {END}")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    current = README.read_text()
    updated = render(current)
    if args.check:
        if updated != current:
            print("README.md's loss table is out of date: run python scripts/loss_table.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
