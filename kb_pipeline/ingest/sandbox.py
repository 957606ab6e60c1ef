"""SandboxedReader: parses untrusted files in worker processes with a memory cap and a per-file timeout."""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from kb_pipeline.ingest.readers import ParsedDocument, read_document
from kb_pipeline.ingest.text_utils import MB, ReadError

Reader = Callable[..., ParsedDocument]
STARTUP_TIMEOUT_S = 120.0


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    ready: bool = False
    job: tuple[int, Path] | None = None
    deadline: float = math.inf


class SandboxedReader:
    """Runs `reader` in worker processes with a memory cap and a per-file wall-clock timeout.

    A hostile PDF/DOCX can loop forever or allocate without bound; here it only costs that file.
    Workers are reused across files and replaced only after a timeout, crash or memory error.
    The cap is RLIMIT_AS set to the worker's start-up footprint plus `memory_mb`, so it holds
    even when the parent's __main__ (re-imported by "spawn") pulls in large libraries.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float = 60.0,
        memory_mb: int = 1024,
        processes: int = 1,
        reader: Reader = read_document,
    ) -> None:
        if timeout_s <= 0 or memory_mb <= 0 or processes < 1 or max_bytes <= 0:
            raise ValueError("max_bytes, timeout_s, memory_mb and processes must be positive")
        try:
            pickle.dumps(reader)
        except Exception as exc:
            raise TypeError(f"reader must be a module-level function so workers can import it: {exc}") from None
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.reader = reader
        # "spawn" never copies the parent, which may hold torch/tokenizers threads and locks.
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker | None] = [None] * processes
        self._running = False
        self._closed = False

    def __enter__(self) -> SandboxedReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def read(self, path: Path) -> ParsedDocument:
        for _, result in self.read_many([path]):
            if isinstance(result, ReadError):
                raise result
            return result
        raise AssertionError("read_many yielded nothing for one path")

    def read_many(
        self, paths: Iterable[Path], *, in_process: Callable[[Path], bool] | None = None
    ) -> Iterator[tuple[Path, ParsedDocument | ReadError]]:
        """Yield (path, document or error) in input order while up to `processes` files parse at once.

        Paths for which `in_process(path)` is true are parsed by the same reader in this process, with
        the same errors, between the sandboxed ones: for small text files a worker round trip costs
        more than the parse, and their parsers have nothing that can hang or crash.
        """
        if self._closed:
            raise RuntimeError("SandboxedReader is closed")
        if self._running:
            raise RuntimeError("SandboxedReader.read_many is already running; finish that iteration first")
        self._running = True
        try:
            if in_process is None:
                yield from self._read_in_order(enumerate(Path(path) for path in paths))
            else:
                yield from self._read_mixed([Path(path) for path in paths], in_process)
        finally:
            for slot, worker in enumerate(self._workers):
                if worker is not None and worker.job is not None:
                    self._retire(slot)  # its answer would arrive in the next iteration
            self._running = False

    def close(self) -> None:
        """Ask every worker to exit (all at once, so their shutdowns overlap), then reap them."""
        for worker in self._workers:
            if worker is not None:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 2.0
        for slot, worker in enumerate(self._workers):
            if worker is not None:
                worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
                self._retire(slot)
        self._closed = True

    def _read_in_order(self, jobs: Iterator[tuple[int, Path]]) -> Iterator[tuple[Path, ParsedDocument | ReadError]]:
        # Finished results wait here until every earlier file is done; the window bounds that buffer.
        window = 4 * len(self._workers)
        finished: dict[int, tuple[Path, ParsedDocument | ReadError]] = {}
        next_index, in_flight, exhausted = 0, 0, False
        while True:
            while not exhausted and in_flight + len(finished) < window and (slot := self._idle_slot()) is not None:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                else:
                    self._dispatch(slot, job)
                    in_flight += 1
            if next_index in finished:
                yield finished.pop(next_index)
                next_index += 1
                continue  # a slot may have freed up: refill before yielding more
            if exhausted and in_flight == 0:
                return
            for index, path, result in self._collect():
                finished[index] = (path, result)
                in_flight -= 1

    def _read_mixed(
        self, paths: list[Path], in_process: Callable[[Path], bool]
    ) -> Iterator[tuple[Path, ParsedDocument | ReadError]]:
        here = [in_process(path) for path in paths]
        sandboxed = self._read_in_order(enumerate(path for path, local in zip(paths, here) if not local))
        try:
            for path, local in zip(paths, here):
                yield (path, self._read_here(path)) if local else next(sandboxed)
        finally:
            sandboxed.close()

    def _read_here(self, path: Path) -> ParsedDocument | ReadError:
        outcome = _read_one(self.reader, path, self.max_bytes, self.memory_mb)
        return outcome[1] if outcome[0] == "ok" else ReadError(path, outcome[1], outcome[2])

    def _idle_slot(self) -> int | None:
        for slot, worker in enumerate(self._workers):
            if worker is None or worker.job is None:
                return slot
        return None

    def _dispatch(self, slot: int, job: tuple[int, Path]) -> None:
        worker = self._workers[slot]
        if worker is None:
            worker = self._workers[slot] = self._start_worker()
        worker.conn.send(job[1])  # a new worker reads it once started
        worker.job = job
        worker.deadline = time.monotonic() + (self.timeout_s if worker.ready else STARTUP_TIMEOUT_S)

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(child_conn, self.reader, self.max_bytes, self.memory_mb),
            name="kb-reader",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    def _collect(self) -> list[tuple[int, Path, ParsedDocument | ReadError]]:
        """Wait for at least one worker to answer, die or run past its deadline."""
        busy = [(slot, worker) for slot, worker in enumerate(self._workers) if worker is not None and worker.job]
        delay = max(0.0, min(worker.deadline for _, worker in busy) - time.monotonic())
        wait([handle for _, worker in busy for handle in (worker.conn, worker.process.sentinel)], delay)
        results = []
        for slot, worker in busy:
            outcome = self._poll(slot, worker)
            if outcome is not None:
                results.append(outcome)
        return results

    def _poll(self, slot: int, worker: _Worker) -> tuple[int, Path, ParsedDocument | ReadError] | None:
        index, path = worker.job
        while worker.conn.poll():
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(timeout=1.0)  # it closed the pipe on its way out
                break
            if message[0] == "ready":
                worker.ready = True
                worker.deadline = time.monotonic() + self.timeout_s
                continue
            worker.job, worker.deadline = None, math.inf
            if message[0] == "ok":
                return index, path, message[1]
            kind, text = message[1], message[2]
            if kind == "memory":
                self._retire(slot)  # its heap may stay fragmented or half-reserved
            return index, path, ReadError(path, kind, text)
        if worker.process.is_alive() and time.monotonic() < worker.deadline:
            return None
        if not worker.ready:
            exitcode = worker.process.exitcode
            self._retire(slot)
            raise RuntimeError(f"sandbox worker failed to start (exit code {exitcode}); see its stderr")
        if worker.process.is_alive():
            self._retire(slot)
            message = f"parsing took longer than {self.timeout_s:g} s and was stopped"
            return index, path, ReadError(path, "timeout", message)
        worker.process.join(timeout=1.0)
        kind, text = _describe_exit(worker.process.exitcode)
        self._retire(slot)
        return index, path, ReadError(path, kind, text)

    def _retire(self, slot: int) -> None:
        worker = self._workers[slot]
        if worker is None:
            return
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5.0)
        worker.conn.close()
        self._workers[slot] = None


def _describe_exit(exitcode: int | None) -> tuple[str, str]:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return "memory", f"parser process was killed ({name}), most likely for using too much memory"
        return "corrupt", f"parser process crashed ({name}) while reading the file"
    return "corrupt", f"parser process exited unexpectedly (exit code {exitcode}) while reading the file"


def _worker_main(conn: Connection, reader: Reader, max_bytes: int, memory_mb: int) -> None:
    """Parse paths from `conn` until told to stop; every outcome goes back as a plain tuple."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _cap_address_space(memory_mb)
    conn.send(("ready",))
    while True:
        try:
            path = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if path is None:
            return
        try:
            conn.send(_read_one(reader, path, max_bytes, memory_mb))
        except MemoryError:
            conn.send(("error", "memory", f"parsed text is too large to return within the {memory_mb} MB memory limit"))


def _read_one(reader: Reader, path: Path, max_bytes: int, memory_mb: int) -> tuple:
    try:
        return ("ok", reader(path, max_bytes=max_bytes))
    except ReadError as exc:
        return ("error", exc.kind, exc.message)
    except MemoryError:
        return ("error", "memory", f"parser needed more than the {memory_mb} MB memory limit")
    except Exception as exc:
        return ("error", "corrupt", f"parser failed: {type(exc).__name__}: {exc}")


def _cap_address_space(memory_mb: int) -> None:
    try:
        import resource
    except ImportError:  # not POSIX: no cap, the timeout still applies
        return
    try:
        with open("/proc/self/statm") as statm:
            footprint = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        footprint = 0
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = footprint + memory_mb * MB
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):  # e.g. macOS refuses RLIMIT_AS; the timeout still applies
        pass
