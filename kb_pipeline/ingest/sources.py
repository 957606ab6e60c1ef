"""Walking an ingest path and deciding, per file, whether anything changed since the last run."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from kb_pipeline.ingest.readers import is_supported
from kb_pipeline.store.repo import StoredFile


@dataclass(frozen=True)
class FileEntry:
    path: Path  # absolute
    uri: str  # posix path relative to the source root: the document's identity within its source
    size: int
    mtime: float


@dataclass(frozen=True)
class Scan:
    files: list[FileEntry]
    skipped: list[Path]  # visible files in a format we do not read


def source_root_and_scope(path: Path) -> tuple[Path, str]:
    """A folder is its own source; a single file belongs to a source rooted at its folder."""
    path = path.resolve()
    if path.is_dir():
        return path, ""
    return path.parent, path.name


def relative_scope(root: Path, path: Path) -> str:
    rel = path.resolve().relative_to(root)
    return "" if str(rel) == "." else rel.as_posix()


def in_scope(uri: str, scope: str) -> bool:
    return not scope or uri == scope or uri.startswith(scope + "/")


def scan(root: Path, scope: str = "") -> Scan:
    """Supported files below root/scope, sorted; hidden files and folders (.git, .kb) are ignored."""
    start = root / scope if scope else root
    if start.is_file():
        candidates = [start]
    else:
        candidates = []
        for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            candidates.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    files, skipped = [], []
    for path in candidates:
        if not path.is_file():  # broken symlink, socket, ...
            continue
        if not is_supported(path):
            skipped.append(path)
            continue
        stat = path.stat()
        files.append(FileEntry(path, path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime))
    return Scan(files, skipped)


def is_unchanged_fast(entry: FileEntry, known: StoredFile | None) -> bool:
    """Same size and mtime as an active stored document: trusted without reading the file."""
    return (
        known is not None
        and known.status == "active"
        and known.size == entry.size
        and abs(known.mtime - entry.mtime) < 1e-6
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
