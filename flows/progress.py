"""Progress from inside flow tasks to whoever started the flow (`kb run` draws rich bars).

Tasks on the default runner run in this process, so a module-level reporter reaches them; on Dask
they run elsewhere and simply report nothing (the Prefect UI shows task states there).
"""

from __future__ import annotations

import threading
from typing import Protocol


class Reporter(Protocol):
    def update(self, stage: str, done: int, total: int, detail: str = "") -> None: ...


class _Silent:
    def update(self, stage: str, done: int, total: int, detail: str = "") -> None:
        pass


_reporter: Reporter = _Silent()
_lock = threading.Lock()


def set_reporter(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter or _Silent()


def report(stage: str, done: int, total: int, detail: str = "") -> None:
    with _lock:
        _reporter.update(stage, done, total, detail)


class Counter:
    """Counts items of one stage across tasks (ingest units report one file at a time)."""

    def __init__(self, stage: str, total: int, start: int = 0) -> None:
        self.stage, self.total, self.done = stage, total, start
        report(stage, start, total)

    def __call__(self, detail: str = "") -> None:
        self.done += 1
        report(self.stage, self.done, self.total, detail)
