"""`kb`: the command line. Thin: every command calls library functions and renders their result."""

from kb_pipeline.cli import serve_commands, store_commands, train_commands  # noqa: F401  (registers the commands)
from kb_pipeline.cli.common import app

__all__ = ["app"]
