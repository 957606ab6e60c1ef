"""The error of `kb eval` (defined with every other user-facing error in kb_pipeline.errors); no torch needed."""

from kb_pipeline.errors import EvalError

__all__ = ["EvalError"]
