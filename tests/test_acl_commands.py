"""Access control across every `kb` command that shows documents, as a fixed adversarial matrix.

Users: the operator (no --user), an unknown user, a user in no group, users in g1, in g2, and in a group
spelled oddly. Documents: public, restricted to g1, to g2, to an oddly spelled group, and to g2 or that
group. Commands: search (keyword, dense, hybrid; without filters, with --tag, with --category), show,
docs, export, stats, tag and summarise. Each restricted document carries a marker word in its title,
text, summary, tag and file name; a marker must appear in a command's output exactly when its reader may
read the document. Rules: with --user a command shows what that user may read and nothing else; an
unknown user is an error; an unreadable document gets the same message as a missing one. Without
--user the operator sees everything, except in search, which stays public-only.

Adapters are trained before the restricted documents exist, so no model has learnt a marker (a
predicted tag or summary can only come from the document itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import kb_pipeline.enrich.shared_pass as enrich_module
from kb_pipeline.cli import app
from kb_pipeline.enrich.shared_pass import enrich, load_task_models
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.store import users
from kb_pipeline.store.db import session_factory
from kb_pipeline.training.loop import TrainConfig
from kb_pipeline.training.service import train_tasks
from tiny_models import single_threaded, tiny_bert_backbone

runner = CliRunner()
QUICK = TrainConfig(epochs=1, batch_size=4, max_length=48, max_steps=3, lr=5e-3)

# marker -> ACL groups as written in front matter (empty: public)
DOCS = {
    "zqpublic": [],
    "zqgone": ["g1"],
    "zqgtwo": ["g2"],
    "zqodd": ["Finance-Team"],
    "zqboth": ["G2", "  finance-team "],
}
# user -> groups as typed to `kb users add` (None: no such user; "": the operator, no --user)
USERS = {
    "": None,
    "mallory": None,
    "nobody": [],
    "alice": ["g1"],
    "bob": ["g2"],
    "carol": ["FINANCE-team"],
}
MAY_READ = {
    "nobody": {"zqpublic"},
    "alice": {"zqpublic", "zqgone"},
    "bob": {"zqpublic", "zqgtwo", "zqboth"},
    "carol": {"zqpublic", "zqodd", "zqboth"},
}
QUERY = "quarterly report " + " ".join(DOCS)


def training_corpus(root: Path) -> Path:
    """Public labelled documents the adapters learn from (no marker anywhere)."""
    root.mkdir(parents=True)
    topics = {"hr": ("leave", "Employees request annual leave through the people portal."),
              "engineering": ("deploy", "Engineers deploy services and roll back failed releases.")}
    for category, (word, summary) in topics.items():
        for i in range(6):
            body = " ".join(f"{summary} Step {j} of the {word} process {i}." for j in range(4))
            (root / f"{category}-{i}.md").write_text(
                f"---\ntitle: {word.title()} guide {i}\ncategory: {category}\ntags: [{word}, shared]\n"
                f"summary: {summary}\n---\n# {word.title()} guide {i}\n\n{body}\n"
            )
    return root


def acl_corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    for marker, groups in DOCS.items():
        acl = f"acl: {json.dumps(groups)}\n" if groups else ""
        (root / f"{marker}.md").write_text(
            f"---\ntitle: Report {marker}\ncategory: hr\ntags: [shared, {marker}]\n"
            f"summary: The {marker} summary.\n{acl}---\n# Report {marker}\n\n"
            f"The quarterly report {marker} covers leave and releases. The {marker} team deploys on Fridays.\n"
        )
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.fixture
def kb(settings, tmp_path, monkeypatch):
    """A KB with trained classify/summarise adapters, enriched and indexed, and the users above."""
    backbone = tiny_bert_backbone()
    monkeypatch.setattr(enrich_module, "load_backbone", lambda *args, **kwargs: backbone)
    ingest(settings, [training_corpus(tmp_path / "train")])
    outcomes = train_tasks(settings, ["classify", "summarise"], backbone=backbone, train_config=QUICK)
    assert all(o.trained for o in outcomes), [o.message for o in outcomes]
    ingest(settings, [acl_corpus(tmp_path / "acl")])
    enrich(settings, models=load_task_models(settings, backbone))
    with session_factory(settings).begin() as session:
        for name, groups in USERS.items():
            if groups is not None:
                users.add_user(session, name, groups)
    return tmp_path / "acl"


def invoke(user: str, *args: str):
    result = runner.invoke(app, [*args, *(["--user", user] if user else [])])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def markers_in(text: str) -> set[str]:
    return {m for m in DOCS if m in text}


def check_unknown_user(result) -> None:
    assert result.exit_code == 1 and "no user 'mallory'" in result.output, result.output
    assert not markers_in(result.output)


def test_every_command_shows_exactly_what_the_reader_may_read(kb):
    folder = kb
    everything = set(DOCS)
    for user in USERS:
        allowed = everything if user == "" else MAY_READ.get(user, set())
        searchable = {"zqpublic"} if user == "" else allowed  # search without --user: public only

        for mode in ("keyword", "dense", "hybrid"):
            for filters in ([], ["--tag", "shared"], ["--category", "hr"]):
                result = invoke(user, "search", QUERY, "--mode", mode, "-k", "50", "--json", *filters)
                if user == "mallory":
                    check_unknown_user(result)
                    continue
                assert result.exit_code == 0, result.output
                found = markers_in(json.dumps(json.loads(result.stdout)["results"]))  # not the echoed query
                assert found <= searchable, (user, mode, filters, found)
                assert found == searchable, (user, mode, filters, found)  # allowed documents do appear

        for command in (["docs", "--json"], ["export"], ["docs"]):
            result = invoke(user, *command)
            if user == "mallory":
                check_unknown_user(result)
                continue
            assert result.exit_code == 0, result.output
            assert markers_in(result.output) == allowed, (user, command, result.output)
        if user != "mallory":
            exported = [json.loads(line) for line in invoke(user, "export").stdout.splitlines()]
            acl = {row["title"].split()[-1]: row["acl"] for row in exported if row["title"].startswith("Report")}
            assert set(acl) == allowed and all(acl[m] == [] for m in acl if m == "zqpublic")
            assert all(acl[m] for m in acl if m != "zqpublic")  # consumers of the file can filter

        result = invoke(user, "stats", "--json")
        if user == "mallory":
            check_unknown_user(result)
        else:
            stats = json.loads(result.stdout)
            assert stats["documents"] == 12 + len(allowed)  # the 12 public training documents
            assert stats["restricted_documents"] == len(allowed - {"zqpublic"})

        for marker in DOCS:
            path = str(folder / f"{marker}.md")
            for command in (["show", path], ["tag", path], ["summarise", path], ["show", path, "--json"]):
                result = invoke(user, *command)
                if user == "mallory":
                    check_unknown_user(result)
                elif marker in allowed:
                    assert result.exit_code == 0, (user, command, result.output)
                    assert marker in result.output, (user, command, result.output)
                else:  # exactly what a missing document says: nothing tells it exists
                    missing = invoke(user, command[0], str(folder / "zqmissing.md"))
                    assert result.exit_code == missing.exit_code == 1, (user, command, result.output)
                    assert result.output.replace(marker, "zqmissing") == missing.output, (user, command)
                    assert not markers_in(result.output.replace(path, "")), (user, command, result.output)
