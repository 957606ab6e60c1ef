"""The one error type: every failure a user can act on is a `KBError` with a message and an exit code.

The CLI (`kb_pipeline.cli.common.command`) turns any KBError into one line on stderr and its exit code;
anything else is a bug and keeps its traceback. Each subclass also keeps the builtin base it had before
(ValueError, LookupError, OSError, ...) so code that catches those still does. Importable without torch,
faiss or SQLAlchemy, so every `kb` command starts fast.
"""

from __future__ import annotations

from pathlib import Path


class KBError(Exception):
    """An error whose message is meant for the user as is: no traceback, exit code `exit_code`."""

    exit_code: int = 1

    @property
    def message(self) -> str:
        return str(self)


class UsageError(KBError):
    """A command was called with arguments it cannot use (conflicting options, an unreadable --queries file)."""


class ConfigError(KBError, ValueError):
    """A setting has a value the pipeline cannot use; the message names the variable."""


class StoreError(KBError, RuntimeError):
    """The database cannot be used as it is."""


class NotInitialised(StoreError):
    """The database is missing, behind or ahead of this code's migrations (`kb init` fixes the first two)."""


class IngestPathError(KBError, ValueError):
    """An ingest path does not exist; raised before anything is written."""


class BackboneError(KBError, RuntimeError):
    """The configured backbone cannot be found or loaded; the message says which and why."""


class InsufficientData(KBError, ValueError):
    """The labelled data cannot train this task; the message says exactly what is missing."""


class RegistryError(KBError, ValueError):
    """An adapter registry operation that cannot be done (no such version, nothing to roll back to)."""


class IndexNotBuilt(KBError, RuntimeError):
    """There are no embeddings to build an index from yet; `kb enrich` makes them."""


class IndexCorrupt(KBError):
    """A saved index that cannot be trusted (unreadable, truncated, or not matching its sidecar)."""


class IndexWriteError(KBError, OSError):
    """Saving an index file failed (disk full, I/O error); the previous index stays live.

    An OSError too, so callers that retry I/O errors (the flows) still do; its message is one line for the user.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:  # picklable: (message,) rebuilds it
        super().__init__(message)
        self.errno = errno

    @classmethod
    def saving(cls, path: Path, cause: OSError) -> IndexWriteError:
        reason = f"{cause.strerror} (errno {cause.errno})" if cause.errno and cause.strerror else str(cause)
        return cls(f"could not save the vector index {path}: {reason}; the previous index stays in use", cause.errno)


class SearchError(KBError, ValueError):
    """A search that cannot run as asked (unknown user, bad mode); the message says why."""


class UnknownUser(KBError, LookupError):
    """`--user` names nobody; the message says how to add them."""


class NotAvailable(KBError, RuntimeError):
    """The adapter or document needed is missing; the message says what to do."""


class EvalError(KBError, ValueError):
    """The corpus cannot be evaluated as asked (too few labels, a test glob matching nothing); says why."""


class ReviewError(KBError, ValueError):
    """A review that cannot be recorded: unknown document, empty or conflicting labels, nothing to confirm."""
