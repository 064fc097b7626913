"""The package's layering (pyproject.toml, [tool.importlinter]): lora → run side → harness.analysis →
harness.plots / harness.prose → harness.book → the CLI, and no import cycles.  Checked with import-linter."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.is_file():
        return str(exe)
    found = shutil.which("lint-imports")
    if not found:
        pytest.skip("import-linter is not installed (pip install import-linter)")
    return found


def test_import_contracts_are_kept():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and "2 kept, 0 broken" in proc.stdout


def test_a_forbidden_import_is_caught(tmp_path):
    """The contracts bite: a copy of the package where analysis imports plots breaks the layers contract."""
    for pkg in ("harness", "lora"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    runs = tmp_path / "harness" / "analysis" / "runs.py"
    runs.write_text(runs.read_text() + "\nfrom ..plots import style  # noqa: E402,F401\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "harness.analysis.runs -> harness.plots.style" in proc.stdout
