"""Time the README's commands on this machine; write the figures to docs/runtimes.md and the README's quotes.

python scripts/measure_readme.py                    # demo, the CPU-size monai.bundle run, shapes, compare
python scripts/measure_readme.py --only demo shapes # some of them (the bundle run needs the demo's data)
python scripts/measure_readme.py --with-tests       # also the test suite, as CI runs it (minutes)
python scripts/measure_readme.py --check            # the README quotes what docs/runtimes.md holds

Each command runs as written in the README, in a scratch folder, one after another. Measured: wall time, the CPU
time of the command's processes (user + system), its exit status, and the load average before and after (other
processes on the cores inflate both times). docs/runtimes.md records them with the machine (CPU model, cores),
the versions and the date; the README's figures sit between ``<!-- runtime:NAME -->`` and ``<!-- /runtime -->``
markers and are rewritten from the same numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNTIMES = ROOT / "docs" / "runtimes.md"
#: The README's commands, verbatim (tests/test_readme.py checks that the README holds each one).
COMMANDS = {
    "demo": "medseg demo",
    "bundle_cpu": (
        "OMP_NUM_THREADS=1 python -m monai.bundle run --config_file "
        "\"['bundles/synapse_unet3d/configs/train.json','configs/losses/focal_tversky.json']\" \\\n"
        "    --bundle_root runs/ft_cpu --dataset_dir medseg_demo/data --max_epochs 12 --val_interval 4 "
        "--train#trainer#epoch_length 40 \\\n"
        '    --num_workers 0 --learning_rate 0.003 --roi_size "[32,32,16]" --pixdim "[8.0,8.0,16.0]" \\\n'
        '    --network_def#channels "[8,16,32]" --network_def#strides "[2,2]" --network_def#num_res_units 0'
    ),
    "shapes": "medseg shapes --losses dice focal lovasz",
    "compare": "medseg compare --out study/",
    "tests": "python -m pytest -q tests",
}
DEFAULT = ("demo", "bundle_cpu", "shapes", "compare")
MARKER = re.compile(r"<!-- runtime:(\w+) -->(.*?)<!-- /runtime -->", re.S)
ROW = re.compile(r"^\| `(\w+)` \| .* \| (\d+) s \| (\d+) s \| (-?\d+) \|.*$", re.M)


@dataclass
class Timing:
    name: str
    command: str
    wall_s: float
    cpu_s: float
    status: int
    load_before: float
    load_after: float


def machine() -> str:
    """CPU model, cores this process may use (of the machine's), memory: one line."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        model = found.group(1).strip() if found else model
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    return f"{usable} cores ({os.cpu_count()} on the machine), {model}, {memory:.0f} GiB"


def run(name: str, scratch: Path) -> Timing:
    """Run ``COMMANDS[name]`` with bash in ``scratch``; wall and CPU time of it and its children."""
    command = COMMANDS[name]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    log = scratch / f"{name}.log"
    with log.open("w") as out:
        status = subprocess.run(["bash", "-c", command], cwd=scratch, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{name}: {wall:.0f} s wall, {cpu:.0f} s CPU, exit {status} (output: {log})", file=sys.stderr)
    return Timing(name, command, wall, cpu, status, load_before, os.getloadavg()[0])


def runtimes_markdown(timings: list[Timing], where: str, previous: str = "") -> str:
    """docs/runtimes.md: ``timings`` measured now, plus the rows of ``previous`` (same machine) not measured again."""
    import monai
    import torch

    today = date.today().isoformat()
    rows = [
        f"| `{t.name}` | `{' '.join(t.command.replace(chr(92) + chr(10), ' ').split())}` | {t.wall_s:.0f} s | "
        f"{t.cpu_s:.0f} s | {t.status} | {t.load_before:.1f} → {t.load_after:.1f} | {today} |"
        for t in timings
    ]
    if f"on {where};" in previous:
        measured = {t.name for t in timings}
        kept = [m.group(0) for m in ROW.finditer(previous) if m.group(1) not in measured]
        rows = sorted(rows + kept)
    busiest = max(max(t.load_before, t.load_after) for t in timings)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    caveat = (
        f"The load average reached {busiest:.1f} on {usable} cores: other processes shared them, so these figures "
        "are inflated; re-measure on an idle machine before quoting them as this machine's speed."
        if busiest > usable
        else f"The 1-minute load average, which counts the measured commands' own processes (and the previous "
        f"command's for a minute), stayed at or below {busiest:.1f} on {usable} cores: no contention."
    )
    return "\n".join(
        [
            "# Runtimes of the README's commands",
            "",
            "Written by `python scripts/measure_readme.py` (do not edit by hand): each command as the README gives "
            "it, run in a scratch folder, one after another. Wall time, CPU time of the command's processes "
            "(user + system), exit status, and the 1-minute load average before → after.",
            "",
            f"Measured on {where}; Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads by default), MONAI {monai.__version__}.",
            "",
            caveat,
            "",
            "| name | command | wall | CPU | exit | load | date |",
            "|---|---|--:|--:|--:|---|---|",
            *rows,
            "",
        ]
    )


def quoted_figures(runtimes: str) -> dict[str, str]:
    """What the README quotes for each measured command: ``"25 s"`` (or ``"3 min"``), and ``machine``."""
    figures = {name: _duration(float(wall)) for name, wall, _, _ in ROW.findall(runtimes)}
    found = re.search(r"^Measured on (\d+) cores \([^)]*\), ([^,]+),", runtimes, re.M)
    if found:
        figures["machine"] = f"{found.group(1)} cores ({found.group(2)})"
    return figures


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def render_readme(readme: str, figures: dict[str, str]) -> str:
    missing = sorted({m.group(1) for m in MARKER.finditer(readme)} - set(figures))
    if missing:
        raise SystemExit(f"docs/runtimes.md has no figure for README marker(s) {missing}: measure them (--only)")
    return MARKER.sub(lambda m: f"<!-- runtime:{m.group(1)} -->{figures[m.group(1)]}<!-- /runtime -->", readme)


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(COMMANDS), help="measure these (default: all but tests)")
    parser.add_argument("--with-tests", action="store_true", help="also time the test suite")
    parser.add_argument("--check", action="store_true", help="only check the README against docs/runtimes.md")
    parser.add_argument("--keep", type=Path, help="run in this folder (kept) instead of a temporary one")
    args = parser.parse_args(argv)
    if args.check:
        expected = render_readme(README.read_text(), quoted_figures(RUNTIMES.read_text()))
        if expected != README.read_text():
            print("README.md's runtime figures differ from docs/runtimes.md: run scripts/measure_readme.py")
            return 1
        return 0
    names = list(args.only or DEFAULT) + (["tests"] if args.with_tests else [])
    with tempfile.TemporaryDirectory(prefix="medseg-measure-") as temporary:
        scratch = args.keep or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        for folder in ("bundles", "configs", "tests", "pyproject.toml"):
            if not (scratch / folder).exists():
                (scratch / folder).symlink_to(ROOT / folder)
        timings = [run(name, scratch) for name in names]
    failed = [t.name for t in timings if t.status != 0]
    if failed:
        print(f"not written: {failed} failed (their output is in the scratch folder; use --keep DIR)", file=sys.stderr)
        return 1
    previous = RUNTIMES.read_text() if RUNTIMES.is_file() else ""
    _write_atomically(RUNTIMES, runtimes_markdown(timings, machine(), previous))
    _write_atomically(README, render_readme(README.read_text(), quoted_figures(RUNTIMES.read_text())))
    print(f"written: {RUNTIMES}, {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
