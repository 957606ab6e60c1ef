"""Index errors, importable without faiss so the CLI can name them cheaply."""

from __future__ import annotations

from pathlib import Path


class IndexNotBuilt(RuntimeError):
    """There are no embeddings to build an index from yet; `kb enrich` makes them."""


class IndexWriteError(OSError):
    """Saving an index file failed (disk full, I/O error); the previous index stays live.

    An OSError, so callers that retry I/O errors still do; its message is one line for the user.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:  # picklable: (message,) rebuilds it
        super().__init__(message)
        self.errno = errno

    @classmethod
    def saving(cls, path: Path, cause: OSError) -> IndexWriteError:
        reason = f"{cause.strerror} (errno {cause.errno})" if cause.errno and cause.strerror else str(cause)
        return cls(f"could not save the vector index {path}: {reason}; the previous index stays in use", cause.errno)
