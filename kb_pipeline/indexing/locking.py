"""Safe writes to an index folder: one writer at a time, and files replaced atomically.

Two ingest runs may update the same index; ``index_lock`` serialises them across processes so
neither overwrites the other's additions. Readers never lock: writers only ever ``os.replace`` a
complete, fsynced temp file onto the real name, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


@contextmanager
def index_lock(folder: Path, timeout_s: float = 600) -> Iterator[Path]:
    """Hold the exclusive writer lock (``fcntl.flock`` on ``folder/.lock``) for the ``with`` block.

    Not re-entrant: a second ``index_lock`` on the same folder, even in the same process, waits.
    The lock dies with its process, so a crashed writer never leaves the folder locked.
    Raises TimeoutError naming the lock file when it cannot be taken within ``timeout_s``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    raise TimeoutError(
                        f"could not lock {lock_path} within {timeout_s:g}s: another index writer "
                        f"(pid {holder}, e.g. a concurrent ingest run) holds it"
                    ) from None
                time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, 0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)  # diagnostics only: who holds the lock
        try:
            yield lock_path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def temp_path(target: Path) -> Path:
    """A fresh empty file beside ``target`` (same filesystem, so ``os.replace`` is atomic)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (making renames in it durable), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
