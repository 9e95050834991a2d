"""The import contracts of pyproject.toml ([tool.importlinter]): they hold, and they fail when an
import breaks them (a plugin imported by the core, a cycle)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
pytest.importorskip("importlinter")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_contracts_hold():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


@pytest.mark.parametrize("where, line, broken", [
    ("dqsearch/deploy/runtime.py", "import dqsearch_ort  # noqa\n", "never imports a backend plugin"),
    ("dqsearch/units.py", "from dqsearch import latency  # noqa\n", "no import cycles"),
    ("dqsearch/quant/blocks.py", "from dqsearch import models  # noqa\n", "knows no models"),
])
def test_contracts_catch_a_violation(tmp_path, where, line, broken):
    shutil.copytree(ROOT / "dqsearch", tmp_path / "dqsearch", ignore=shutil.ignore_patterns("*.pt", "*.png"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / where
    path.write_text(path.read_text() + line)
    r = lint_imports(tmp_path)
    assert r.returncode == 1, r.stdout[-3000:]
    assert "BROKEN" in r.stdout and broken in r.stdout.replace("\n", " ")
