"""The HTTP API (kb_pipeline.web) through FastAPI's TestClient, on SQLite and Postgres: every endpoint, its
status codes, and the one ACL rule for an adversarial set of callers (anonymous, no groups, a group without
the reviewer role, a reviewer without the group, a reviewer with it, a revoked token, garbage credentials)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from kb_pipeline.web.settings import WebSettings
from tiny_models import single_threaded
from web_kb import XSS_TITLE, build

QUERIES = ["zebrafinch salary", "merger plan", "holiday", "secret pay bands", "payments invoice"]
PUBLIC = {"leave", "laptop", "invoice", "xss"}
# who -> the documents they may read; the board document is readable by nobody who still holds a token
READS = {None: PUBLIC, "carol": PUBLIC, "rita": PUBLIC, "bob": PUBLIC | {"salaries"}, "alice": PUBLIC | {"salaries"}}
SECRET_TAGS = {"secret-pay": "salaries", "pay-bands": "salaries", "merger-plan": "merger", "acquisition": "merger"}


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.fixture
def kb(settings, tmp_path):
    return build(settings, tmp_path / "corpus")


@pytest.fixture
def client(kb):
    with TestClient(kb.app()) as c:
        yield c


def headers(kb, who):
    return kb.auth(who) if who else {}


def test_every_endpoint_shows_each_caller_exactly_what_they_may_read(kb, client):
    names = {v: k for k, v in kb.ids.items()}
    for who, readable in READS.items():
        allowed = {kb.ids[n] for n in readable}
        for q in QUERIES:
            for mode in ("hybrid", "keyword", "dense"):
                r = client.get("/api/search", params={"q": q, "k": 20, "mode": mode}, headers=headers(kb, who))
                assert r.status_code == 200, r.text
                body = r.json()
                found = {x["doc_id"] for x in body["results"]}
                assert found <= allowed, (who, q, mode, {names[i] for i in found - allowed})
                if mode == "dense":  # every readable document is ranked by a dense search
                    assert found == allowed, (who, q)
        facets = client.get("/api/search", params={"q": "zebrafinch"}, headers=headers(kb, who)).json()["facets"]
        assert facets["documents"] == len(readable)
        facet_tags = {f["value"] for f in facets["tags"]}
        assert ("secret-pay" in facet_tags) == ("salaries" in readable)  # (its predicted tags hide behind gold ones)
        assert not {t for t, doc in SECRET_TAGS.items() if doc not in readable} & facet_tags, (who, facet_tags)
        assert ("board-only" in {f["value"] for f in facets["categories"]}) is False
        # filtering by a tag only a restricted document carries finds nothing, rather than that document
        hidden = client.get("/api/search", params={"q": "zebrafinch", "tag": "merger-plan"}, headers=headers(kb, who))
        assert hidden.json()["results"] == [] and hidden.json()["facets"]["documents"] == 0
        for name, doc_id in kb.ids.items():
            r = client.get(f"/api/documents/{doc_id}", headers=headers(kb, who))
            if name in readable:
                assert r.status_code == 200 and r.json()["title"], (who, name)
            else:  # the same 404 as a document that does not exist: its existence does not leak
                assert r.status_code == 404 and r.json() == {"error": "not found", "detail": f"no document '{doc_id}'"}
            page = client.get(f"/documents/{doc_id}", headers=headers(kb, who))
            assert page.status_code == (200 if name in readable else 404)
        exported = [json.loads(line) for line in client.get("/api/export", headers=headers(kb, who)).text.splitlines()]
        assert {row["id"] for row in exported} == allowed
    for bad in ({"Authorization": f"Bearer {kb.tokens['eve']}"}, {"Authorization": "Bearer kb_not-a-token"},
                {"Authorization": "Basic YWxpY2U6eA=="}, {"Cookie": f"kb_session={kb.tokens['eve']}"}):
        for path in ("/api/search?q=zebrafinch", f"/api/documents/{kb.ids['salaries']}", "/api/export", "/api/review",
                     "/api/adapters"):
            r = client.get(path, headers=bad)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", (bad, path, r.text)
    assert client.get("/api/health", headers={"Authorization": "Bearer kb_nope"}).status_code == 200  # liveness: no auth


def test_labels_and_review_queue_need_a_reviewer_who_may_read_the_document(kb, client):
    salaries, merger, invoice = kb.ids["salaries"], kb.ids["merger"], kb.ids["invoice"]
    post = lambda who, doc, body: client.post(f"/api/documents/{doc}/labels", json=body, headers=headers(kb, who))  # noqa: E731
    assert post(None, invoice, {"add_tags": ["payments"]}).status_code == 401
    assert post("bob", invoice, {"add_tags": ["payments"]}).status_code == 403  # reads it, may not review
    assert post("bob", merger, {"add_tags": ["x"]}).status_code == 404  # may not read it: 404 before 403
    assert post("rita", salaries, {"add_tags": ["x"]}).status_code == 404  # a reviewer outside the hr group
    assert post("alice", merger, {"confirm": True}).status_code == 404  # nobody reads the board's document
    assert post("alice", 10**30, {"confirm": True}).status_code == 404
    assert post("alice", invoice, {}).status_code == 400
    assert post("alice", invoice, {"category": "  "}).json()["error"] == "bad request"
    assert post("alice", invoice, {"add_tags": "payments"}).status_code == 422

    r = post("alice", salaries, {"add_tags": ["pay-bands"], "category": "payroll"})
    assert r.status_code == 200, r.text
    assert {(v["label"], v["action"]) for v in r.json()["recorded"]} == {("pay-bands", "confirmed"), ("payroll", "replaced")}
    labels = client.get(f"/api/documents/{salaries}", headers=kb.auth("bob")).json()["labels"]
    gold = {t["label"]: t for t in labels["gold"]["tags"]}
    assert gold["pay-bands"]["origin"] == "review" and gold["pay-bands"]["reviewer"] == "alice"
    assert gold["pay-bands"]["predicted_score"] == pytest.approx(0.9)
    assert gold["secret-pay"]["origin"] == "front_matter" and labels["gold"]["category"]["label"] == "payroll"
    r = post("alice", kb.ids["leave"], {"remove_tags": ["vacation"]})
    assert r.status_code == 200 and r.json()["labels"]["rejected_tags"][0]["tag"] == "vacation"
    # the search facets follow at once (this process's cache is cleared by the change)
    facets = client.get("/api/search", params={"q": "x"}, headers=kb.auth("alice")).json()["facets"]
    assert "vacation" not in {f["value"] for f in facets["tags"]}

    assert client.get("/api/review").status_code == 401
    assert client.get("/api/review", headers=kb.auth("bob")).status_code == 403
    queue = client.get("/api/review", headers=kb.auth("rita")).json()["queue"]
    assert [item["id"] for item in queue][0] == invoice and queue[0]["needs_review"]  # abstained category first
    assert not {item["id"] for item in queue} & {salaries, merger}  # never what the reviewer may not read
    assert post("alice", invoice, {"confirm": True}).status_code == 200
    after = client.get("/api/review", headers=kb.auth("alice")).json()
    assert invoice not in {item["id"] for item in after["queue"]} and after["counts"]["needs_review"] == 0


def test_sign_in_sets_a_safe_cookie_and_every_form_needs_its_csrf_token(kb, client):
    laptop = kb.ids["laptop"]
    page = client.get("/signin")
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/signin", data={"token": kb.tokens["alice"], "csrf_token": "wrong"},
                       follow_redirects=False).status_code == 403
    bad = client.post("/signin", data={"token": "kb_nope", "csrf_token": csrf}, follow_redirects=False)
    assert bad.status_code == 401 and "unknown or revoked" in bad.text
    r = client.post("/signin", data={"token": kb.tokens["alice"], "csrf_token": csrf, "next": "//evil.example/"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # never a redirect off the site
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("kb_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "alice" not in cookie
    assert "alice" in client.get("/").text

    doc_page = client.get(f"/documents/{laptop}").text
    form_csrf = doc_page.split('name="csrf_token" value="')[1].split('"')[0]
    form = {"action": "accept_tag", "tag": "hardware"}
    assert client.post(f"/documents/{laptop}/labels", data=form, follow_redirects=False).status_code == 403
    assert client.post(f"/documents/{laptop}/labels", data=form | {"csrf_token": "0" * 64},
                       follow_redirects=False).status_code == 403
    # the JSON API called with the cookie (as a page's script would) needs the token in a header
    assert client.post(f"/api/documents/{laptop}/labels", json={"add_tags": ["hardware"]}).status_code == 403
    r = client.post(f"/documents/{laptop}/labels", data=form | {"csrf_token": form_csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/documents/{laptop}"
    labels = client.get(f"/api/documents/{laptop}").json()["labels"]
    assert [(t["label"], t["origin"], t["reviewer"]) for t in labels["gold"]["tags"]] == [("hardware", "review", "alice")]
    assert "reviewed_at" in labels["gold"]["tags"][0]

    other = TestClient(client.app)  # another browser: its CSRF token (another session) is not accepted
    other.cookies.set("kb_session", kb.tokens["bob"])
    assert other.post(f"/documents/{laptop}/labels", data=form | {"csrf_token": form_csrf},
                      follow_redirects=False).status_code == 403

    with TestClient(kb.app()) as c:  # revoking the token ends the session
        c.cookies.set("kb_session", kb.tokens["carol"])
        assert c.get("/").status_code == 200
        from kb_pipeline.store import tokens
        from kb_pipeline.store.db import session_factory

        with session_factory(kb.settings).begin() as s:
            tokens.revoke_tokens(s, "carol")
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    assert client.post("/signout", data={"csrf_token": "nope"}, follow_redirects=False).status_code == 403
    out = client.post("/signout", data={"csrf_token": client.get("/").text.split('name="csrf_token" value="')[1][:64]},
                      follow_redirects=False)
    assert out.status_code == 303 and 'kb_session=""' in out.headers["set-cookie"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # no SQL of its own
def test_pages_render_untrusted_documents_as_text_with_strict_headers(kb, client):
    for path in ("/", "/?q=holiday", f"/documents/{kb.ids['xss']}", "/signin", "/docs", "/api/health"):
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    for path in ("/?q=holiday+rota", f"/documents/{kb.ids['xss']}", "/review"):
        html = client.get(path, headers=kb.auth("alice")).text
        assert "&lt;script&gt;window.kbXss=1&lt;/script&gt;" in html, path  # the title, shown as text
        for raw in ("<script>window", "<img src=x", "<svg", "onerror=\"window", 'href="javascript:'):
            assert raw not in html, (path, raw)
    assert "<b>rota</b>" not in client.get(f"/documents/{kb.ids['xss']}").text
    assert client.get(f"/api/documents/{kb.ids['xss']}").json()["title"] == XSS_TITLE  # the API keeps the data as is
    html = client.get("/", params={"q": "laptop"}).text
    assert '<mark>laptop</mark>' in html.lower() and 'class="chip predicted"' in html  # highlighted, predicted with score
    assert client.get("/static/style.css").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/documents/{doc_id}", "/api/documents/{doc_id}/labels", "/api/review", "/api/export",
            "/api/adapters", "/api/health", "/api/ready"} <= set(spec["paths"])
    assert client.get("/nope").status_code == 404
    assert client.get("/api/search", params={"mode": "fuzzy"}).json()["error"] == "invalid request"
    assert client.get("/api/search", params={"k": 1000}).status_code == 422
    assert client.get("/api/documents/abc").status_code == 404
    assert client.delete("/api/health").json() == {"error": "method not allowed", "detail": "Method Not Allowed"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # no SQL of its own
def test_require_login_closes_everything_but_sign_in_and_health(kb):
    with TestClient(kb.app(WebSettings(require_login=True))) as c:
        for path in ("/api/search?q=leave", f"/api/documents/{kb.ids['leave']}", "/api/export", "/api/adapters",
                     "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        for path in ("/", f"/documents/{kb.ids['leave']}", "/docs"):
            r = c.get(path, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/signin?next="), path
        assert c.get("/signin").status_code == 200 and c.get("/api/health").status_code == 200
        assert c.get("/api/search?q=leave", headers=kb.auth("carol")).status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # no SQL of its own
def test_search_reports_the_versions_that_answered_and_hot_swaps_a_new_index(kb):
    from kb_pipeline.enrich.shared_pass import enrich, load_task_models

    engine = kb.engine()
    with TestClient(kb.app(engine=engine)) as c:
        first = c.get("/api/search", params={"q": "leave"}).json()["versions"]
        assert first["index_build"] and first["embed_key"].startswith("backbone:")
        assert c.get("/api/ready").json()["ready"] is True
        (kb.settings.home.parent / "corpus" / "extra.md").write_text("# Extra\n\nA new note about leave.\n")
        from kb_pipeline.ingest.pipeline import ingest

        ingest(kb.settings, [kb.settings.home.parent / "corpus"])
        enrich(kb.settings, models=load_task_models(kb.settings, kb.fresh_backbone()))
        assert engine.refresh() is True and engine.refresh() is False
        second = c.get("/api/search", params={"q": "leave"}).json()["versions"]
        assert second["index_build"] > first["index_build"] and second["embed_key"] == first["embed_key"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_without_a_readable_index_search_falls_back_to_keywords_and_ready_says_why(kb):
    from kb_pipeline.store import index_builds
    from kb_pipeline.store.db import session_factory

    with session_factory(kb.settings)() as s:
        path = index_builds.live_build(s).path
    with open(path, "r+b") as f:  # damaged behind the KB's back: the checksum no longer matches
        f.seek(100)
        f.write(b"\0" * 64)
    with TestClient(kb.app()) as c:
        ready = c.get("/api/ready")
        assert ready.status_code == 503 and "cannot be read" in ready.json()["detail"]
        hybrid = c.get("/api/search", params={"q": "laptop"}).json()
        assert hybrid["mode"] == "keyword" and hybrid["results"][0]["title"] == "Laptop setup"
        dense = c.get("/api/search", params={"q": "laptop", "mode": "dense"})
        assert dense.status_code == 503 and dense.json()["error"] == "unavailable"
        assert "No vector index yet" in c.get("/", params={"q": "laptop"}).text
