"""The one error type of `kb eval`, importable without torch so the CLI can register it at start-up."""


class EvalError(ValueError):
    """The corpus cannot be evaluated as asked (too few labels, a test glob matching nothing); says why."""
