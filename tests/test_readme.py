"""The README stays true: its loss table is the registry's, its commands are the ones CI runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_loss_table_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "loss_table.py"), "--check"], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up.*?```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the README's set-up is two commands"
    assert block[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_evaluate_line_reproduces_the_demo_table(tmp_path, monkeypatch):
    """The commands table's `medseg evaluate` line, run as written on the demo's output, gives the demo's numbers."""
    import json
    import math
    import shlex

    from medseg.bundles import demo
    from medseg.cli import main

    line = re.search(r"\| `(medseg evaluate [^`]*)` \|", (ROOT / "README.md").read_text()).group(1)
    monkeypatch.chdir(tmp_path)
    table = demo("medseg_demo", epochs=2, cases=4, size=32)  # the README's demo, CPU-test sized
    assert main(shlex.split(line)[1:]) == 0
    summary = json.loads((tmp_path / "medseg_demo" / "predictions" / "evaluation" / "summary.json").read_text())
    assert list(summary["per_structure"]) == list(table.index)
    for organ, row in table.iterrows():
        for column, value in row.items():
            mean = summary["per_structure"][organ][column]["mean"]
            assert mean == value or (mean is None and math.isnan(value)), (organ, column)


def _measure_readme():
    import importlib.util

    spec = importlib.util.spec_from_file_location("measure_readme", ROOT / "scripts" / "measure_readme.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_readme_quotes_the_measured_runtimes():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "measure_readme.py"), "--check"], capture_output=True
    )
    assert result.returncode == 0, result.stdout.decode()


def test_the_measured_commands_are_the_readmes():
    measure = _measure_readme()
    readme = (ROOT / "README.md").read_text()
    for name, command in measure.COMMANDS.items():
        assert command in readme, f"scripts/measure_readme.py times {name!r} as {command!r}, which the README lacks"
    figures = {"demo": "12 s", "machine": "2 cores (a CPU)"}
    rendered = measure.render_readme(
        "<!-- runtime:demo -->old<!-- /runtime --> on <!-- runtime:machine --><!-- /runtime -->", figures
    )
    assert (
        rendered
        == "<!-- runtime:demo -->12 s<!-- /runtime --> on <!-- runtime:machine -->2 cores (a CPU)<!-- /runtime -->"
    )
