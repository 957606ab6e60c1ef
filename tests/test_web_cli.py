"""`kb users token` / `kb users revoke` and the token they print opening the API; `kb web` refuses a bad port."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from kb_pipeline.cli import app
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.schema import ApiToken
from tiny_models import single_threaded
from web_kb import build

runner = CliRunner()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_token_is_shown_once_stored_as_a_hash_and_revoked_for_every_session(settings, tmp_path):
    with single_threaded():
        kb = build(settings, tmp_path / "corpus")
    plain = runner.invoke(app, ["users", "token", "bob"])
    assert plain.exit_code == 0, plain.output
    token = plain.stdout.strip().splitlines()[0]
    issued = runner.invoke(app, ["users", "token", "bob", "--json"])
    second = json.loads(issued.stdout)
    assert second["name"] == "bob" and second["token"].startswith("kb_") and second["token"] != token
    with session_factory(settings)() as s:
        stored = {row.token_hash for row in s.query(ApiToken)}
    assert token not in stored and second["token"] not in stored  # only hashes are kept
    missing = runner.invoke(app, ["users", "token", "mallory"])
    assert missing.exit_code != 0 and "mallory" in missing.output and "kb users add" in missing.output

    with TestClient(kb.app()) as client:
        for t in (token, second["token"]):
            r = client.get("/api/search", params={"q": "zebrafinch"}, headers={"Authorization": f"Bearer {t}"})
            assert "Salary bands" in [x["title"] for x in r.json()["results"]]  # bob reads hr documents
        revoked = runner.invoke(app, ["users", "revoke", "bob", "--json"])
        assert json.loads(revoked.stdout) == {"name": "bob", "revoked": 3}  # the fixture's token and both new ones
        for t in (token, second["token"]):
            r = client.get("/api/search", params={"q": "zebrafinch"}, headers={"Authorization": f"Bearer {t}"})
            assert r.status_code == 401
    assert "0 tokens revoked" in runner.invoke(app, ["users", "revoke", "bob"]).stdout
    assert runner.invoke(app, ["users", "revoke", "mallory"]).exit_code != 0
    assert runner.invoke(app, ["web", "--port", "0"]).exit_code == 2  # checked before anything is loaded
