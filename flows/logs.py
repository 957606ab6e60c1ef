"""Where flow and task-run logs go: a file under the KB, never tracebacks on the user's console.

Prefect's default logging prints every failing task and flow run with its full traceback on stderr,
so a user of `kb run` saw several screens of Prefect output before kb's one-line error. Here the
run loggers (`prefect.flow_runs`, `prefect.task_runs`) write to `$KB_HOME/logs/kb.log` (INFO and up,
with tracebacks) and to the Prefect API (the UI's logs tab), and not to the console. `kb serve` adds
`kb_brief`: one line per failing flow run on stderr, naming the log file.

Everything else keeps Prefect's defaults, read from Prefect's own logging.yml so upgrades carry over;
the result is written to `$KB_HOME/prefect/logging.yml` and named by PREFECT_LOGGING_CONFIG_PATH, so
the processes Prefect starts (flow runs of `kb serve`, Dask workers) log the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections import deque
from pathlib import Path

import yaml

from kb_pipeline.config import Settings

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
CONFIG_VARS = ("PREFECT_LOGGING_CONFIG_PATH", "PREFECT_LOGGING_SETTINGS_PATH")
# What `kb serve` sets so that failing scheduled runs also show one line on its console.
SERVE_CONSOLE = {"PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_HANDLERS": "api,kb_file,kb_brief"}
_WRITTEN: deque[BaseException] = deque(maxlen=16)  # the exceptions whose tracebacks went to the file last


def log_file(settings: Settings) -> Path:
    return settings.home / "logs" / "kb.log"


def config_path(settings: Settings) -> Path:
    return settings.prefect_home / "logging.yml"


def run_log_file() -> Path | None:
    """The file this process writes run logs to (None before Prefect set up logging, or under the user's config)."""
    for handler in logging.getLogger(RUN_LOGGERS[0]).handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


def traceback_logged(exc: BaseException) -> bool:
    """Whether this process wrote this exception's traceback to the log file (a flow or task run failed on it)."""
    return any(exc is written for written in _WRITTEN)


def logging_config(settings: Settings) -> dict:
    """Prefect's default logging config with the run loggers sent to the KB's log file (and the API)."""
    spec = importlib.util.find_spec("prefect")  # finds the package without importing it
    default = Path(next(iter(spec.submodule_search_locations))) / "logging" / "logging.yml"
    config = yaml.safe_load(default.read_text(encoding="utf-8"))
    file = str(log_file(settings)).replace("$", "$$")  # Prefect substitutes $SETTING in the file
    filters = config.setdefault("filters", {})
    filters["kb_written"] = {"()": "flows.logs.WrittenExceptions"}
    filters["kb_once"] = {"()": "flows.logs.OncePerException"}
    config["formatters"]["kb_file"] = {
        "()": "prefect.logging.formatters.PrefectFormatter",
        "format": "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s",
        "flow_run_fmt": "%(asctime)s | %(levelname)-7s | Flow run %(flow_run_name)r - %(message)s",
        "task_run_fmt": "%(asctime)s | %(levelname)-7s | Task run %(task_run_name)r - %(message)s",
        "datefmt": "%Y-%m-%d %H:%M:%S",
    }
    config["formatters"]["kb_brief"] = {"()": "flows.logs.OneLineFormatter", "log_file": file}
    config["handlers"]["kb_file"] = {
        "level": 0, "class": "logging.FileHandler", "formatter": "kb_file", "filename": file,
        "encoding": "utf-8", "delay": True,  # no empty file until something is logged
        "filters": ["kb_written"],
    }
    config["handlers"]["kb_brief"] = {
        "level": "ERROR", "class": "logging.StreamHandler", "formatter": "kb_brief", "stream": "ext://sys.stderr",
        "filters": ["kb_once"],
    }
    for name in RUN_LOGGERS:
        config["loggers"][name] = {"level": "INFO", "handlers": ["api", "kb_file"], "propagate": False}
    return config


def write_logging_config(settings: Settings) -> Path:
    """Write the config for this KB (only when it changed) and return its path."""
    path = config_path(settings)
    text = yaml.safe_dump(logging_config(settings), sort_keys=False)
    log_file(settings).parent.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)  # a process starting meanwhile never reads half a file
    return path


class OneLineFormatter(logging.Formatter):
    """The first line of a record, without its traceback, and where the full story is."""

    def __init__(self, log_file: str = "") -> None:
        super().__init__(datefmt="%H:%M:%S")
        self.log_file = log_file

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().splitlines() or [""]
        run = getattr(record, "flow_run_name", None) or getattr(record, "task_run_name", None)
        run = f"{run}: " if run and run != "<unknown>" else ""
        line = f"{self.formatTime(record, self.datefmt)} | {record.levelname} | {run}{lines[0]}"
        if self.log_file and (record.exc_info or record.exc_text or len(lines) > 1):
            line += f" (full traceback in {self.log_file})"
        return line


class OncePerException(logging.Filter):
    """Pass one record per exception: a failing subflow, its parent flow and the engine all log the same one."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: deque[BaseException] = deque(maxlen=16)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        if any(exc is seen for seen in self.seen):
            return False
        self.seen.append(exc)
        return True


class WrittenExceptions(logging.Filter):
    """Remembers the exceptions whose tracebacks went to the log file, so kb can say where to find them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            _WRITTEN.append(record.exc_info[1])
        return True
