"""The README stays true: its loss table is the registry's, its commands are the ones CI runs."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loss_table_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "loss_table.py"), "--check"], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up.*?```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the README's set-up is two commands"
    assert block[1] in (ROOT / ".ci" / "run").read_text()
