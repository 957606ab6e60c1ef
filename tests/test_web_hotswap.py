"""Hot-swap under load: clients search a running `kb web` (uvicorn on loopback) while a new embed adapter is
trained and promoted and `kb enrich` builds its index. No request fails, and the versions every response
names move from the old embedder and index to the new ones, never back.

Also two app instances on one Postgres database and one KB_HOME: what one records the other serves."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from kb_pipeline.enrich.shared_pass import enrich, load_task_models
from kb_pipeline.store.db import session_factory
from kb_pipeline.training import registry
from kb_pipeline.training.loop import TrainConfig
from kb_pipeline.training.service import train_tasks
from kb_pipeline.web.app import create_app
from kb_pipeline.web.settings import WebSettings
from tiny_models import single_threaded
from web_kb import build


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_searches_never_fail_while_a_new_embed_adapter_and_index_are_swapped_in(settings, tmp_path):
    import uvicorn

    kb = build(settings, tmp_path / "corpus")
    engine = kb.engine(poll_s=0.2, watch=True)
    app = create_app(settings, web=WebSettings(poll_s=0.2), engine=engine)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started

    stop = threading.Event()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    failures: list[str] = []

    def client(i: int) -> None:
        queries = ["leave policy", "laptop setup", "invoice approval", "holiday rota"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=kb.auth("alice")) as http:
            n = 0
            while not stop.is_set():
                try:
                    r = http.get("/api/search", params={"q": queries[(i + n) % 4], "k": 3})
                    if r.status_code != 200 or len(r.json()["results"]) != 3:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        v = r.json()["versions"]
                        seen[i].append((v["index_build"], v["embed_key"]))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                n += 1
                time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        with single_threaded():
            backbone = kb.fresh_backbone()
            cfg = TrainConfig(epochs=1, batch_size=4, max_length=64, max_steps=2)
            [outcome] = train_tasks(settings, ["embed"], backbone=backbone, train_config=cfg)
            assert outcome.trained, outcome.message
            if outcome.status != "active":  # 2 steps may not beat the untuned backbone: promote by hand
                with session_factory(settings).begin() as s:
                    registry.promote(s, outcome.version)
            time.sleep(0.6)  # promoted, index not rebuilt yet: still answered by the old embedder and index
            report = enrich(settings, models=load_task_models(settings, backbone))
        new_key = f"adapter:{outcome.version}"
        assert report.embed_key == new_key
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(s and s[-1][1] == new_key for s in seen):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.should_exit = True
        engine.stop()
    assert not failures, failures[:5]
    for answers in seen:
        builds = [b for b, _ in answers]
        assert builds == sorted(builds), "versions never go back"
        assert answers[0][1].startswith("backbone:") and answers[-1][1] == new_key
        assert {key for _, key in answers} == {answers[0][1], new_key}
    assert engine.swaps >= 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_two_app_instances_share_one_postgres_database_and_kb_home(settings, tmp_path):
    with single_threaded():
        kb = build(settings, tmp_path / "corpus")
        one, two = TestClient(kb.app()), TestClient(kb.app())
    laptop = kb.ids["laptop"]
    # a sign-in made on one instance works on the other (the session is the token, checked against the database)
    page = one.get("/signin")
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    assert one.post("/signin", data={"token": kb.tokens["alice"], "csrf_token": csrf},
                    follow_redirects=False).status_code == 303
    two.cookies.set("kb_session", one.cookies.get("kb_session"))
    assert "alice" in two.get("/").text
    r = one.post(f"/api/documents/{laptop}/labels", json={"add_tags": ["hardware"]}, headers=kb.auth("alice"))
    assert r.status_code == 200
    labels = two.get(f"/api/documents/{laptop}", headers=kb.auth("bob")).json()["labels"]
    assert [(t["label"], t["reviewer"]) for t in labels["gold"]["tags"]] == [("hardware", "alice")]
    a, b = (c.get("/api/search", params={"q": "laptop"}).json()["results"] for c in (one, two))
    assert [(x["doc_id"], x["ranks"], x["labels"]) for x in a] == [(x["doc_id"], x["ranks"], x["labels"]) for x in b]
    from kb_pipeline.store import tokens

    with session_factory(settings).begin() as s:
        tokens.revoke_tokens(s, "alice")
    for app in (one, two):
        assert app.get("/api/search", headers=kb.auth("alice")).status_code == 401
        assert app.get("/", follow_redirects=False).status_code == 303
