"""scripts/bench_transforms.py's timing helper (the tables themselves are smoke-tested in tests/test_bench.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_transforms


def test_cpu_clock_leaves_out_time_spent_off_the_cpu():
    # on a shared machine the CPU clock does not count the time a job waits for a core (here: sleeps)
    fns = {"sleep": lambda: time.sleep(0.05)}
    assert bench_transforms.interleaved_medians(fns, repeats=1)["sleep"] >= 0.05
    assert bench_transforms.interleaved_medians(fns, repeats=1, clock="cpu")["sleep"] < 0.02
