"""The guard rails run with the suite, so CI enforces them: ruff (lint + import order) and the import layers.

Both read their configuration from pyproject.toml ([tool.ruff], [tool.importlinter]). A tool that is not
installed skips its test with a reason (`pip install -e .[test]` installs both); a finding fails it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """The tool next to this Python first (the project's venv), else on PATH; skip when it is in neither."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e .[test])")
    return found


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    result = run(tool("ruff"), "check", "--no-cache", "--output-format", "concise", ".")
    found = result.stdout + result.stderr
    assert result.returncode == 0, f"ruff check found problems (`ruff check --fix` fixes some):\n{found}"


def test_imports_follow_the_layers():
    result = run(tool("lint-imports"), "--no-cache")
    assert result.returncode == 0, f"an import breaks a contract in pyproject.toml:\n{result.stdout}{result.stderr}"
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout
