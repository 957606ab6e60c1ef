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
    refused_links: list[tuple[str, str, str]]  # (path, "symlink", message): links not followed, and why


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
    """Supported files below root/scope, sorted; hidden files and folders (.git, .kb) are ignored.

    Symbolic links are never followed. One pointing inside the scanned folder adds nothing, since the
    walk reaches its target under the target's own (real) path, so a file is read once whatever links
    to it; one pointing outside (`ln -s /etc/passwd notes.txt`), a broken one and a loop are refused,
    with the reason, so the operator sees why they are missing.
    """
    start = root / scope if scope else root
    candidates, links = [], []
    if start.is_file():
        candidates = [start]
    else:
        for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
            here = Path(dirpath)
            visible_dirs = []
            for name in sorted(dirnames):  # links to folders are listed here, and not walked into
                if not name.startswith("."):
                    if (here / name).is_symlink():
                        links.append(here / name)
                    else:
                        visible_dirs.append(name)
            dirnames[:] = visible_dirs
            for name in sorted(filenames):
                if not name.startswith("."):
                    path = here / name
                    (links if path.is_symlink() else candidates).append(path)
    files, skipped, refused = [], [], []
    for link in links:
        reason = _refused_link(link, start)
        if reason:
            refused.append((str(link), "symlink", f"{link}: {reason}"))
    for path in candidates:
        if not path.is_file():  # socket, fifo, device, ...
            continue
        if not is_supported(path):
            skipped.append(path)
            continue
        try:
            stat = path.stat()
        except OSError:  # gone since the walk listed it: as if it had never been there
            continue
        files.append(FileEntry(path, path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime))
    return Scan(files, skipped, refused)


def _refused_link(link: Path, start: Path) -> str | None:
    """Why a symbolic link under `start` is not ingested, or None when its target is read under its own path."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop (RuntimeError before Python 3.13)
        return "broken or looping symbolic link, not followed"
    try:
        inside = target.relative_to(start)
    except ValueError:
        return f"symbolic link to {target}, outside the ingested folder {start}; not followed"
    if any(part.startswith(".") for part in inside.parts):
        return f"symbolic link to {target}, a hidden file or folder, which is not ingested"
    return None


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
