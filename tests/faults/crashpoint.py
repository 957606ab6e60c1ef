"""Kill a `kb` command with SIGKILL at a named point inside an index save or an adapter promotion.

    python tests/faults/crashpoint.py POINT kb-args...     (forkserver.py arms points the same way)

Those windows last microseconds, so a timed kill from outside almost never lands in them. This
driver wraps one library function (in this throwaway process only; library code has no test hooks)
so that the process kills itself with SIGKILL, exactly like `kill -9`, when execution reaches POINT.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_call(module, name: str, *, nth: int = 1, after: bool = False) -> None:
    """Replace module.name with a wrapper that dies on its nth call (before it runs, or after it returns)."""
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth and not after:
            die()
        result = real(*args, **kwargs)
        if len(calls) == nth and after:
            die()
        return result

    setattr(module, name, wrapper)


def _index_points() -> dict:
    from kb_pipeline.indexing import sync, vector_index
    from kb_pipeline.store import index_builds

    # the writer of one file: _write_file (write + fsync) in the current vector_index, else fsync_path
    writer = "_write_file" if hasattr(vector_index, "_write_file") else "fsync_path"

    def after_sidecar_rename():  # both files in place, the build row not yet flipped
        real = os.replace

        def replace(src, dst, *a, **k):
            real(src, dst, *a, **k)
            if str(dst).endswith(".json"):
                die()

        os.replace = replace

    def before_cleanup():  # the build row committed, old index files not yet removed
        real = Path.glob

        def glob(self, pattern, *a, **k):
            if pattern == "*.faiss":
                die()
            return real(self, pattern, *a, **k)

        Path.glob = glob

    return {
        "index:build-row": lambda: _kill_on_call(index_builds, "start_build", after=True),  # 'building' row, no file
        "index:temp-written": lambda: _kill_on_call(vector_index, writer, nth=1, after=True),
        "index:sidecar-written": lambda: _kill_on_call(vector_index, writer, nth=2, after=True),
        "index:renamed": after_sidecar_rename,
        "index:finish-uncommitted": lambda: _kill_on_call(index_builds, "finish_build", after=True),
        "index:committed": before_cleanup,
        "index:reported": lambda: _kill_on_call(sync, "_report"),
    }


def _train_points() -> dict:
    from kb_pipeline.training import registry, service

    return {
        "train:before-save": lambda: _kill_on_call(service, "save_adapter"),
        "train:saved-unregistered": lambda: _kill_on_call(service, "save_adapter", after=True),
        "train:activate-uncommitted": lambda: _kill_on_call(registry, "_activate", after=True),
        "train:register-uncommitted": lambda: _kill_on_call(registry, "register", after=True),
        "train:committed": lambda: _kill_on_call(service, "TaskOutcome"),
    }


def _io_faults() -> dict:
    """Disk full or an I/O error while the index is written (the process lives on and must fail cleanly)."""
    import errno

    from kb_pipeline.indexing import vector_index

    def full_disk(nth: int):
        """The nth file written gets a few bytes, then ENOSPC (what write(2) does on a full disk)."""
        calls = []

        def write_file(path, data):
            calls.append(1)
            if len(calls) == nth:
                Path(path).write_bytes(bytes(memoryview(data))[:16])
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, data)

        real = vector_index._write_file
        vector_index._write_file = write_file

    def eio_fsync():
        def fsync(fd):
            raise OSError(errno.EIO, "Input/output error")

        os.fsync = fsync

    return {"io:enospc-write": lambda: full_disk(1), "io:enospc-sidecar": lambda: full_disk(2), "io:eio-fsync": eio_fsync}


def _barriers() -> dict:
    """Make concurrent commands meet before a step, so their race is certain instead of lucky."""
    import time

    from kb_pipeline.store import outputs

    def meet_before(module, name: str) -> None:
        folder, real, done = Path(os.environ["KB_FAULT_BARRIER"]), getattr(module, name), []

        def wrapper(*args, **kwargs):
            if not done:
                done.append(1)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / str(os.getpid())).touch()
                deadline = time.monotonic() + 30
                while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
            return real(*args, **kwargs)

        setattr(module, name, wrapper)

    def pipeline():
        import flows.runtime

        meet_before(flows.runtime, "start_local_api")  # both start Prefect's local API on one home at once

    return {"meet:save-embeddings": lambda: meet_before(outputs, "save_embeddings"), "meet:run-pipeline": pipeline}


def points(phase: str) -> list[str]:
    return sorted((_index_points if phase == "index" else _train_points)())


def arm(point: str) -> None:
    """Install the kill (or the I/O fault) named `point` in this process."""
    {**_index_points(), **_train_points(), **_io_faults(), **_barriers()}[point]()


def main() -> None:
    point, args = sys.argv[1], sys.argv[2:]
    arm(point)
    from flows.cli import app

    app(args, prog_name="kb")


if __name__ == "__main__":
    main()
