"""Serving errors, importable without torch so every `kb` command starts fast."""


class NotAvailable(RuntimeError):
    """The adapter or document needed is missing; the message says what to do."""
