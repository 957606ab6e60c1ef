"""A small knowledge base for the web tests: public, group-restricted and hostile documents, predictions
written straight into the store, users with API tokens, and an index built with the tiny backbone."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from kb_pipeline.enrich.shared_pass import enrich, load_task_models
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.store import outputs, tokens, users
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.schema import Document
from kb_pipeline.web.app import create_app
from kb_pipeline.web.engine import SearchEngine
from kb_pipeline.web.settings import WebSettings
from tiny_models import tiny_bert_backbone

XSS_TITLE = "<script>window.kbXss=1</script> Holiday <b>rota</b>"
XSS_TAG = "<img src=x onerror=window.kbXss=2>"
BODY = "The {w} procedure explains how {w} requests are filed, approved and archived by the team. " * 6

DOCS = {
    # name: (front matter lines, body word)
    "leave": ("title: Leave policy\ncategory: hr\ntags: [leave, holiday]\nsummary: How to ask for leave.", "leave"),
    "laptop": ("title: Laptop setup", "laptop"),
    "invoice": ("title: Invoice approval", "invoice"),
    "salaries": ("title: Salary bands\nacl: [hr]\ntags: [secret-pay]", "zebrafinch salary"),
    "merger": ("title: Merger plan\nacl: [board]\ntags: [merger-plan]\ncategory: board-only", "zebrafinch merger"),
    "xss": (f"title: \"{XSS_TITLE}\"\ntags: [\"{XSS_TAG}\", \"javascript:alert(3)\"]", "holiday"),
}
XSS_BODY = ('\n\n<script>window.kbXss=4</script> <img src=x onerror="window.kbXss=5"> '
            '[click me](javascript:window.kbXss=6) <a href="javascript:window.kbXss=7">link</a>\n')


@dataclass
class WebKB:
    settings: object
    ids: dict[str, int]
    tokens: dict[str, str] = field(default_factory=dict)
    # the backbone the index was built with, never given adapters: tiny tokenizers trained twice can differ
    backbone: object = None

    def fresh_backbone(self):
        return copy.deepcopy(self.backbone)

    def engine(self, poll_s: float = 3600.0, watch: bool = False) -> SearchEngine:
        return SearchEngine(self.settings, lambda: self.backbone, poll_s=poll_s).start(watch=watch)

    def app(self, web: WebSettings | None = None, engine: SearchEngine | None = None):
        return create_app(self.settings, web=web or WebSettings(), engine=engine or self.engine())

    def auth(self, who: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


def write_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, (front, word) in DOCS.items():
        body = BODY.format(w=word) + (XSS_BODY if name == "xss" else "")
        (root / f"{name}.md").write_text(f"---\n{front}\n---\n# {name.title()}\n\n{body}\n")
    return root


def build(settings, root: Path) -> WebKB:
    """Ingest, embed with the untuned tiny backbone (an index), then predictions and users as a test needs them."""
    ingest(settings, [write_corpus(root)])
    backbone = tiny_bert_backbone()
    enrich(settings, models=load_task_models(settings, copy.deepcopy(backbone)))
    Session = session_factory(settings)
    with Session.begin() as session:
        ids = {Path(d.path).stem: d.id for d in session.scalars(select(Document))}
        outputs.save_labels(session, [
            _labels(ids["laptop"], "it", 0.91, tags=[("hardware", 0.8), ("onboarding", 0.7)]),
            _labels(ids["invoice"], "finance", 0.41, abstained=True, tags=[("payments", 0.66)]),
            _labels(ids["leave"], "hr", 0.97, tags=[("vacation", 0.61)]),
            _labels(ids["salaries"], "hr", 0.88, tags=[("pay-bands", 0.9)]),
            _labels(ids["merger"], "legal", 0.52, abstained=True, tags=[("acquisition", 0.7)]),
            _labels(ids["xss"], "<script>cat</script>", 0.6, tags=[("<svg onload=window.kbXss=8>", 0.77)]),
        ], adapter_version=1)
        outputs.save_summaries(session, [
            {"document_id": ids["laptop"], "document_version": 1, "summary": "Set up a laptop in three steps."},
            {"document_id": ids["xss"], "document_version": 1, "summary": "<img src=x onerror=window.kbXss=9> rota"},
        ], adapter_version=2)
        users.add_user(session, "alice", ["hr", "kb-reviewers"])  # reads hr documents, reviews
        users.add_user(session, "bob", ["hr"])  # reads hr documents, may not review
        users.add_user(session, "carol", [])  # signed in, no groups: public documents only
        users.add_user(session, "rita", ["kb-reviewers"])  # reviews, but may not read hr documents
        users.add_user(session, "eve", ["hr", "board", "kb-reviewers"])  # her token gets revoked
        issued = {name: tokens.issue_token(session, name) for name in ("alice", "bob", "carol", "rita", "eve")}
    with Session.begin() as session:
        tokens.revoke_tokens(session, "eve")
    return WebKB(settings, ids, issued, backbone)


def _labels(doc_id: int, category: str, score: float, *, abstained: bool = False, tags=()) -> dict:
    return {"document_id": doc_id, "document_version": 1, "category": category, "category_score": score,
            "category_margin": 0.05 if abstained else 0.6, "abstained": abstained,
            "tags": [(t, s, s - 0.5) for t, s in tags], "near": []}
