"""Index errors (defined with every other user-facing error in kb_pipeline.errors); importable without faiss."""

from kb_pipeline.errors import IndexCorrupt, IndexNotBuilt, IndexWriteError

__all__ = ["IndexCorrupt", "IndexNotBuilt", "IndexWriteError"]
