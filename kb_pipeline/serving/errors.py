"""Serving errors (defined with every other user-facing error in kb_pipeline.errors); importable without torch."""

from kb_pipeline.errors import NotAvailable, SearchError, UnknownUser

__all__ = ["NotAvailable", "SearchError", "UnknownUser"]
