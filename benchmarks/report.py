"""What every benchmark prints beside its numbers: the library versions and the commit measured."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def versions(packages: Iterable[str]) -> dict:
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kb_pipeline"], cwd=ROOT,
                               capture_output=True, text=True)
        if commit.returncode == 0:
            found["git"] = commit.stdout.strip() + (" + uncommitted kb_pipeline changes" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return found
