"""`kb`: the command line. Thin: every command calls library functions and renders their result."""

# Importing a command module registers its commands; this order is the order `kb --help` lists them,
# which follows the data: ingest -> train -> enrich/search.
from kb_pipeline.cli import store_commands  # noqa: F401  isort: skip
from kb_pipeline.cli import train_commands  # noqa: F401  isort: skip
from kb_pipeline.cli import enrich_commands  # noqa: F401  isort: skip
from kb_pipeline.cli import search_commands  # noqa: F401  isort: skip
from kb_pipeline.cli import review_commands  # noqa: F401  isort: skip
from kb_pipeline.cli import index_commands  # noqa: F401  isort: skip
from kb_pipeline.cli import users_commands  # noqa: F401  isort: skip
from kb_pipeline.cli import eval_commands  # noqa: F401  isort: skip
from kb_pipeline.cli import web_commands  # noqa: F401  isort: skip
from kb_pipeline.cli.common import app

__all__ = ["app"]
