"""Prefect flows end to end: pipeline_flow on a tiny model, re-runs, retries, Dask, concurrent ingest.

One Prefect test harness (a temporary API server) serves the whole module; its home lies in the
module's own KB folder. Prefect is imported only after that is set.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from kb_pipeline.config import Settings
from kb_pipeline.store.db import dispose_engines, session_factory, upgrade
from kb_pipeline.store.schema import Chunk, Document, PredictedLabel

WORDS = ["leave", "deploy", "invoice", "contract", "laptop", "incident", "budget", "holiday"]


@pytest.fixture(scope="module")
def flows_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flows")


@pytest.fixture(scope="module")
def harness(flows_root):
    """Prefect's test harness, with PREFECT_HOME under this module's KB folder."""
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")}
    os.environ["PREFECT_HOME"] = str(flows_root / "kbhome" / "prefect")
    (flows_root / "kbhome" / "prefect").mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def write_corpus(root: Path, n: int = 16) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        category = "hr" if i % 2 else "engineering"
        front = (f"---\ntitle: {word.title()} note {i}\ncategory: {category}\ntags: [{word}]\n"
                 f"summary: About {word}.\n---\n")
        body = " ".join(f"The {word} procedure step {j} for team {i}." for j in range(20))
        (root / f"doc-{i:02d}.md").write_text(f"{front}# {word.title()} note {i}\n\n{body}\n\n## More\n\n{body}\n")
    (root / "zeppelin.md").write_text("# Airship hangar\n\nThe zeppelin hangar opens at dawn for inspections.\n")
    return root


@pytest.fixture
def kb(harness, tiny_backbone_dir, kb_home, monkeypatch) -> Settings:
    monkeypatch.setenv("KB_BACKBONE", str(tiny_backbone_dir))
    monkeypatch.setenv("KB_RETRAIN_SHARE", "0.2")
    s = Settings.from_env()
    yield s
    dispose_engines()


@pytest.fixture(autouse=True)
def _one_thread():
    from tiny_models import single_threaded

    with single_threaded():
        yield


def test_pipeline_flow_end_to_end_then_a_rerun_does_nothing(kb, tmp_path):
    from flows.pipeline import run_pipeline
    from kb_pipeline.indexing.sync import check_index

    corpus = write_corpus(tmp_path / "corpus")
    first = run_pipeline([str(corpus)])
    assert first["ingest"]["added"] == 17 and first["ingest"]["errors"] == 0
    trained = {t: o for t, o in first["training"]["outcomes"].items() if o["trained"]}
    assert set(trained) == {"classify", "embed", "summarise"}
    overview = first["overview"]
    assert overview["documents"] == 17
    assert overview["index"]["vectors"] == first["index"]["count"] == overview["chunks"]
    # A task's first adapter goes live unless it must beat a baseline (embed only), so every document is tagged.
    assert trained["classify"]["status"] == "active", trained["classify"]
    assert overview["auto_tagged_documents"] == 17
    example = overview["example_search"]
    assert example and example["results"], "the closing report shows one example search"

    # search finds the right document
    from kb_pipeline.enrich.shared_pass import load_task_models
    from kb_pipeline.indexing.sync import load_live_index
    from kb_pipeline.search.hybrid import search

    models = load_task_models(kb)
    with session_factory(kb)() as session:
        hits = search(session, "zeppelin hangar", k=3, index=load_live_index(kb, models.embed_key), embed=models.embed)
    assert hits[0]["path"].endswith("zeppelin.md")
    assert check_index(kb, models.embed_key)["ok"]

    second = run_pipeline([str(corpus)])
    assert {k: second["ingest"][k] for k in ("added", "updated", "deleted")} == {"added": 0, "updated": 0, "deleted": 0}
    assert second["training"]["outcomes"] == {}, "no retraining when the labelled data did not change"
    assert all(not n["needed"] for n in second["training"]["needs"])
    enriched = second["enrichment"]
    assert (enriched["tagged"], enriched["summarised"], enriched["embedded"]) == (0, 0, 0)
    assert second["index"]["action"] == "unchanged"


def test_retrain_only_when_enough_labelled_data_changed(kb, tmp_path):
    from flows.pipeline import train_flow
    from kb_pipeline.ingest.pipeline import ingest

    corpus = write_corpus(tmp_path / "corpus")
    upgrade(kb.database_url)
    ingest(kb, [corpus])
    assert set(train_flow(["classify"])["outcomes"]) == {"classify"}
    # one of 16 labelled documents changes its category: 6% < 20%, no retrain
    doc = corpus / "doc-00.md"
    doc.write_text(doc.read_text().replace("category: engineering", "category: hr"))
    ingest(kb, [corpus])
    result = train_flow(["classify"])
    assert result["outcomes"] == {} and "6% changed" in result["needs"][0]["reason"]
    # five more: 6 of 16 = 38% > 20%, retrain
    for i in (2, 4, 6, 8, 10):
        doc = corpus / f"doc-{i:02d}.md"
        doc.write_text(doc.read_text().replace("category: engineering", "category: hr"))
    ingest(kb, [corpus])
    result = train_flow(["classify"])
    assert set(result["outcomes"]) == {"classify"} and result["needs"][0]["needed"]


def test_a_transient_failure_is_retried_and_the_run_succeeds(kb, tmp_path, monkeypatch):
    from flows import pipeline
    from kb_pipeline.enrich import shared_pass as enrich_lib
    from kb_pipeline.ingest.pipeline import ingest

    corpus = write_corpus(tmp_path / "corpus", n=4)
    upgrade(kb.database_url)
    ingest(kb, [corpus])
    real, calls = enrich_lib.enrich_batch, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE chunks", {}, Exception("database is locked"))
        return real(*args, **kwargs)

    monkeypatch.setattr(enrich_lib, "enrich_batch", flaky)
    result = pipeline.enrich_flow()
    assert len(calls) == 2 and result["enrichment"]["embedded"] == result["index"]["count"] > 0


def test_a_permanent_failure_is_not_retried(kb, tmp_path, monkeypatch):
    from flows import pipeline
    from kb_pipeline.enrich import shared_pass as enrich_lib
    from kb_pipeline.ingest.pipeline import ingest

    corpus = write_corpus(tmp_path / "corpus", n=2)
    upgrade(kb.database_url)
    ingest(kb, [corpus])
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ValueError("a bug, not a hiccup")

    monkeypatch.setattr(enrich_lib, "enrich_batch", broken)
    with pytest.raises(ValueError, match="a bug"):
        pipeline.enrich_flow()
    assert len(calls) == 1


def _snapshot(settings: Settings) -> dict:
    """Documents, predicted categories and index entries by path, so two databases can be compared."""
    from kb_pipeline.enrich.shared_pass import current_embed_key
    from kb_pipeline.indexing.sync import load_live_index

    with session_factory(settings)() as session:
        docs = {uri: (title, version) for uri, title, version in session.execute(
            select(Document.uri, Document.title, Document.version).where(Document.status == "active"))}
        chunk_key = {cid: f"{uri}#{ordinal}" for cid, uri, ordinal in session.execute(
            select(Chunk.id, Document.uri, Chunk.ordinal).join(Document))}
        labels = sorted(tuple(row) for row in session.execute(
            select(Document.uri, PredictedLabel.kind, PredictedLabel.label).join(Document)))
    ids = load_live_index(settings, current_embed_key(settings)).ids().tolist()
    return {"docs": docs, "labels": labels, "index": sorted(chunk_key[i] for i in ids), "chunks": len(chunk_key)}


@pytest.mark.postgres
def test_dask_runner_on_postgres_matches_the_default_runner(harness, tiny_backbone_dir, tmp_path, monkeypatch):
    from conftest import _drop_postgres_database, _postgres_database
    from flows.pipeline import run_pipeline
    from flows.runtime import local_dask_cluster

    corpus = write_corpus(tmp_path / "corpus")
    monkeypatch.setenv("KB_BACKBONE", str(tiny_backbone_dir))
    snapshots = {}
    for runner in ("default", "dask"):
        url = _postgres_database()
        monkeypatch.setenv("KB_HOME", str(tmp_path / runner))
        monkeypatch.setenv("KB_DATABASE_URL", url)
        try:
            if runner == "dask":
                with local_dask_cluster(2) as cluster:
                    # small units and batches, so both workers get several
                    result = run_pipeline(
                        [str(corpus)], dask_address=cluster.scheduler_address, files_per_unit=4, docs_per_batch=4
                    )
            else:
                result = run_pipeline([str(corpus)])
            assert result["ingest"]["added"] == 17
            snapshots[runner] = _snapshot(Settings.from_env())
        finally:
            _drop_postgres_database(url)
    for key in ("docs", "chunks", "index", "labels"):
        assert snapshots["dask"][key] == snapshots["default"][key], key
    assert len(snapshots["dask"]["index"]) == snapshots["dask"]["chunks"]


def test_concurrent_ingest_leaves_no_duplicates(settings, tmp_path):
    """Two runs on the same folder at the same time (SQLite and Postgres): one document per file."""
    from kb_pipeline.ingest.pipeline import ingest

    corpus = write_corpus(tmp_path / "corpus", n=40)
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(ingest(settings, [corpus]))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with session_factory(settings)() as session:
        uris = session.scalars(select(Document.uri)).all()
        chunk_docs = set(session.scalars(select(Chunk.document_id)))
    assert len(uris) == len(set(uris)) == 41
    assert len(chunk_docs) == 41
    assert sum(r.counts["added"] for r in reports) == 41, "each file is added by exactly one of the runs"


def test_the_library_never_imports_prefect_or_flows():
    """kb_pipeline is the library; only flows/ may know about Prefect."""
    import ast

    import kb_pipeline

    root = Path(kb_pipeline.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            forbidden = [n for n in names if n.split(".")[0] in ("prefect", "prefect_dask", "flows")]
            offenders += [f"{path.relative_to(root)}: {n}" for n in forbidden]
    assert offenders == []


def test_artifact_markdown_tables():
    from flows import artifacts

    text = artifacts.ingest_markdown(
        {"added": 2, "updated": 0, "unchanged": 1, "deleted": 0, "skipped": 0, "errors": 1, "seconds": 0.5},
        [("/docs/bad.pdf", "pdf", "truncated | cannot read")],
    )
    assert "| 2 | 0 | 1 | 0 | 0 | 1 | 0.5 |" in text
    assert "/docs/bad.pdf" in text and "truncated \\| cannot read" in text
    needs = [{"task": "classify", "needed": True, "reason": "no adapter"},
             {"task": "embed", "needed": False, "reason": "current"}]
    outcome = {"trained": True, "status": "active", "version": 3, "primary_metric": "macro_f1",
               "metrics": {"macro_f1": 0.5}, "baseline": {"macro_f1": 0.25}, "active_before": None,
               "message": "first classify adapter"}
    table = artifacts.training_markdown(needs, {"classify": outcome})
    assert "| classify | active | 3 | macro_f1 | 0.5000 | 0.2500 |" in table
    assert "| embed | skipped |" in table and "current" in table


def test_kb_run_reports_then_says_nothing_to_do(kb, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    corpus = write_corpus(tmp_path / "corpus", n=6)
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(corpus)])
    assert first.exit_code == 0, first.output
    assert "Ingest: 7 added" in first.output and "Example search:" in first.output
    assert "Knowledge base: 7 documents" in first.output
    # a person sees what the models did to a few documents, not only metrics
    assert first.output.count("Auto-tagged: ") >= 2 and "  category " in first.output and "summary: " in first.output
    second = runner.invoke(app, ["run", str(corpus), "--json"])
    assert second.exit_code == 0, second.output
    import json

    data = json.loads(second.stdout)
    assert data["ingest"]["unchanged"] == 7 and data["training"]["outcomes"] == {}
    third = runner.invoke(app, ["run", str(corpus)])
    assert "Nothing to do" in third.output


def test_kb_run_and_serve_refuse_bad_arguments_clearly(kb, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["run", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no such file or folder" in missing.output
    remote = runner.invoke(app, ["run", str(tmp_path), "--task-runner", "dask", "--dask-address", "tcp://10.0.0.1:8786"])
    assert remote.exit_code == 1 and "Postgres" in remote.output
    cron = runner.invoke(app, ["serve", str(tmp_path), "--ingest-cron", "every now and then"])
    assert cron.exit_code == 1 and "--ingest-cron" in cron.output and "not a cron expression" in cron.output


def test_serve_builds_the_two_scheduled_deployments(harness, tmp_path):
    from flows.serve import build_deployments

    ingest, retrain = build_deployments([str(tmp_path)], "*/5 * * * *", "0 3 * * *")
    assert ingest.name == "kb-scheduled-ingest" and ingest.parameters["paths"] == [str(tmp_path)]
    assert ingest.schedules[0].schedule.cron == "*/5 * * * *"
    assert retrain.name == "kb-scheduled-retrain" and retrain.schedules[0].schedule.cron == "0 3 * * *"
    assert retrain.parameters["tasks"] == ["classify", "embed", "summarise"]


def test_models_load_once_per_process_and_reload_after_a_promotion(kb, tmp_path):
    """What a Dask worker relies on: one load serves every batch until the active adapters change."""
    from flows.tasks import task_models
    from kb_pipeline.ingest.pipeline import ingest
    from kb_pipeline.training.service import train_tasks

    upgrade(kb.database_url)
    ingest(kb, [write_corpus(tmp_path / "corpus", n=8)])
    first = task_models(kb)
    assert task_models(kb) is first and first.versions == {}
    (outcome,) = train_tasks(kb, ["classify"])
    assert outcome.status == "active"
    second = task_models(kb)
    assert second is not first and second.versions == {"classify": outcome.version}
    assert task_models(kb) is second and not second.adapters.closed


def _kb_env(kb_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `kb` subprocess: this test's KB, and none of this process's PREFECT_* state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(KB_HOME=str(kb_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", **extra)
    env.pop("KB_DATABASE_URL", None)
    return env


def test_a_failing_task_prints_one_line_and_logs_the_traceback_to_the_kb_log(harness, tmp_path):
    """Prefect's ERROR records with tracebacks go to $KB_HOME/logs/kb.log; stderr gets kb's one line, naming it."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    corpus = write_corpus(tmp_path / "corpus", n=2)
    home = tmp_path / "kbhome"
    kb = Path(sys.executable).with_name("kb")
    # no such backbone: the parse-and-store task fails (a permanent error, no retries); the harness's API
    # saves starting a temporary one
    env = _kb_env(home, KB_BACKBONE=str(tmp_path / "no-model"), PREFECT_API_URL=PREFECT_API_URL.value())
    done = subprocess.run([str(kb), "run", str(corpus)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    log = home / "logs" / "kb.log"
    lines = done.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"error: cannot load tokenizer for backbone '{tmp_path / 'no-model'}'")
    assert errors[0].endswith(f"(full traceback in {log})")
    others = "\n".join(line for line in lines if line not in errors)  # the progress bar, nothing else
    assert not any(word in others for word in ("Traceback", "ERROR", "exception", "Failed")), done.stderr
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "BackboneError" in text
    assert "Task run 'parse-and-store-3-files' - Finished in state Failed" in text


def test_serve_starts_its_server_with_the_ui_asking_its_own_port():
    from flows.serve import server_environment

    env = server_environment("127.0.0.1", 4311, {"PATH": "/bin"})
    assert env["PREFECT_SERVER_UI_API_URL"] == "http://127.0.0.1:4311/api"
    assert (env["PREFECT_SERVER_API_HOST"], env["PREFECT_SERVER_API_PORT"]) == ("127.0.0.1", "4311")
    assert env["PATH"] == "/bin"
    # the user's own UI address wins, under either of Prefect's names for it
    for key in ("PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL"):
        mine = server_environment("127.0.0.1", 4311, {key: "https://kb.example.com/api"})
        assert mine[key] == "https://kb.example.com/api" and len({k for k in mine if "UI_API_URL" in k}) == 1
    # listening everywhere: the browser is sent to this machine's name, kb itself talks to 127.0.0.1
    import socket

    from flows.serve import local_address

    everywhere = server_environment("0.0.0.0", 4400, {})
    assert everywhere["PREFECT_SERVER_UI_API_URL"] == f"http://{socket.gethostname()}:4400/api"
    assert local_address("0.0.0.0", 4400) == "http://127.0.0.1:4400" and local_address("::1", 80) == "http://[::1]:80"


def test_serve_console_shows_a_failing_run_in_one_line():
    import logging
    import sys

    from flows.logs import OneLineFormatter

    try:
        raise ValueError("a bug\nwith a second line")
    except ValueError:
        record = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "Encountered exception: %s",
                                   ("ValueError('a bug')",), sys.exc_info())
    record.flow_run_name = "scheduled ingest ['/docs']"
    line = OneLineFormatter(log_file="/kb/logs/kb.log").format(record)
    assert "\n" not in line and "Traceback" not in line
    assert line.endswith("| ERROR | scheduled ingest ['/docs']: Encountered exception: ValueError('a bug') "
                         "(full traceback in /kb/logs/kb.log)")


def test_serve_console_shows_each_failure_once():
    """A failing subflow, its parent flow and the engine log the same exception: kb serve shows it once."""
    import logging
    import sys

    from flows.logs import OncePerException

    once = OncePerException()

    def record(exc_info) -> logging.LogRecord:
        return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "failed", (), exc_info)

    for message in ("one", "two"):
        try:
            raise ValueError(message)
        except ValueError:
            info = sys.exc_info()
        assert [once.filter(record(info)) for _ in range(3)] == [True, False, False]
    assert once.filter(record(None)) and once.filter(record(None)), "records without an exception all pass"
