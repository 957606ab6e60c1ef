"""One error type: every KBError a command raises becomes its one-line message and exit code; bugs keep tracebacks."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from kb_pipeline import errors
from kb_pipeline.cli.common import command
from kb_pipeline.errors import KBError

runner = CliRunner()


SUBCLASSES = sorted(
    (v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, KBError) and v is not KBError),
    key=lambda c: c.__name__,
)


def _run(exc: BaseException):
    app = typer.Typer()

    @app.command()
    @command
    def fails() -> None:
        raise exc

    return runner.invoke(app, [])


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_a_kb_error_in_a_command_prints_its_message_and_exits_with_its_code(cls, monkeypatch):
    monkeypatch.setattr(cls, "exit_code", 7)  # the code comes from the error, not from the CLI
    result = _run(cls(f"{cls.__name__} went wrong: run `kb init`"))
    assert result.exit_code == 7, result.output
    assert result.output.strip() == f"error: {cls.__name__} went wrong: run `kb init`"
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # handled, not a crash


def test_the_default_exit_code_is_1_as_before():
    assert {cls.exit_code for cls in SUBCLASSES} == {1}
    assert _run(errors.BackboneError("no such backbone")).exit_code == 1


def test_a_message_cannot_drive_the_terminal():
    result = _run(errors.UnknownUser("no user 'eve\x1b[2J'"))
    assert result.output.strip() == "error: no user 'eve\\x1b[2J'"


@pytest.mark.parametrize("bug", [KeyError("chunk_id"), ValueError("not ours"), OSError(5, "I/O error")])
def test_a_bug_is_not_turned_into_a_message(bug):
    result = _run(bug)
    assert result.exception is bug  # propagates: Python prints its traceback
    assert "error:" not in result.output


def test_old_import_paths_name_the_same_classes_with_their_old_builtin_bases():
    from kb_pipeline.backbone.paths import BackboneError
    from kb_pipeline.cli.common import UserError
    from kb_pipeline.config import ConfigError
    from kb_pipeline.errors import NotAvailable
    from kb_pipeline.evaluation.errors import EvalError
    from kb_pipeline.indexing.errors import IndexNotBuilt, IndexWriteError
    from kb_pipeline.indexing.vector_index import IndexCorrupt
    from kb_pipeline.ingest.pipeline import IngestPathError
    from kb_pipeline.search.access import UnknownUser
    from kb_pipeline.search.hybrid import SearchError
    from kb_pipeline.store.db import SchemaError

    old = {
        BackboneError: RuntimeError, UserError: Exception, ConfigError: ValueError, EvalError: ValueError,
        IndexNotBuilt: RuntimeError, IndexWriteError: OSError, IndexCorrupt: Exception, IngestPathError: ValueError,
        UnknownUser: LookupError, NotAvailable: RuntimeError, SearchError: ValueError, SchemaError: RuntimeError,
    }
    for cls, base in old.items():
        assert cls.__module__ == "kb_pipeline.errors" and issubclass(cls, KBError) and issubclass(cls, base), cls
    written = IndexWriteError.saving(__import__("pathlib").Path("/kb/chunks.faiss"), OSError(28, "No space left"))
    assert written.errno == 28 and "No space left (errno 28)" in written.message
