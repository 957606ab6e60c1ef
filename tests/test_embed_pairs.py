"""Embed pairs: uninformative queries are recognised, kept out of training and validation, and counted per source."""

from __future__ import annotations

import numpy as np
import pytest

from kb_pipeline.config import Settings
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.store.db import session_factory, upgrade
from kb_pipeline.training import embed_pairs
from kb_pipeline.training.embed_pairs import MinedPair, accounting, describe, flag_static, is_id_like, kept


@pytest.mark.parametrize("title", ["doc-000123", "IMG_2041.jpg", "scan0001.pdf", "3f2a9c1e-77b4-4d2e-9a1f-0c5e2b7d9e11",
                                   "2024-03-01", "Untitled", "DSC_0042", "a1b2c3d4e5f6", "#12"])
def test_file_ids_are_id_like(title):
    assert is_id_like(title)


@pytest.mark.parametrize("title", ["Quarterly revenue report", "Password reset guide", "Q3 2024 results", "Leeds office move",
                                   "GDPR", "Annual leave and holidays 2026"])
def test_descriptive_titles_are_not_id_like(title):
    assert not is_id_like(title)


def _doc(key: str, title: str, summary: str | None, headings: list[str]) -> list[MinedPair]:
    chunks = [f"# {title}\n\nThe opening section of {key} explains what this document covers in plain words."]
    chunks += [f"## {h}\n\nSection {h} of {key} describes the steps, the owners and the dates involved here." for h in headings]
    return embed_pairs.mine_document(key, title, "\n\n".join(chunks), summary, chunks)


def test_id_like_shared_templated_and_duplicate_queries_are_dropped_and_counted():
    pairs = [
        *_doc("1", "doc-000001", "How expenses are approved by department heads", ["Overview", "Approval limits"]),
        *_doc("2", "doc-000002", "Resetting a forgotten password from the account page", ["Overview", "Expiry"]),
        *_doc("3", "Meeting notes 2024-03-01", None, ["Overview", "Actions"]),
        *_doc("4", "Meeting notes 2024-03-08", None, ["Budget"]),
        *_doc("5", "Meeting notes 2024-03-15", None, ["Hiring"]),
        *_doc("6", "Travel policy", "Travel policy", ["Booking trains"]),  # title repeats the summary
    ]
    flag_static(pairs)
    reasons = {(p.source, p.query): p.dropped for p in pairs}
    assert reasons[("title", "doc-000001")] == "id-like"
    assert reasons[("heading", "Overview")] == "shared"  # 3 documents open a section "Overview"
    assert reasons[("title", "Meeting notes 2024-03-08")] == "templated"
    assert reasons[("title", "Travel policy")] == "duplicate query"
    assert reasons[("summary", "Travel policy")] is None
    assert reasons[("heading", "Approval limits")] is None and reasons[("summary", pairs[0].query)] is None

    counts = accounting(pairs[:9], pairs[9:])
    assert counts["title"] == {"mined": 6, "kept": 0, "kept_train": 0, "kept_val": 0,
                               "dropped": {"duplicate query": 1, "id-like": 2, "templated": 3}}
    assert counts["heading"]["dropped"] == {"shared": 3} and counts["heading"]["kept"] == 6
    assert counts["summary"] == {"mined": 3, "kept": 3, "kept_train": 2, "kept_val": 1, "dropped": {}}
    assert all(p.source != "title" for p in kept(pairs))
    assert "title 0/6 kept (duplicate query 1, id-like 2, templated 3)" in describe(counts)


def test_summary_pair_reads_the_body_not_the_title_that_may_repeat_it():
    [summary, _] = embed_pairs.mine_document("9", "Rates rise", "# Rates rise\n\nThe bank raised rates by half a point today.",
                                             "Rates rise", ["The bank raised rates by half a point today."])
    assert summary.source == "summary" and summary.passage == "The bank raised rates by half a point today."


def test_similarity_screen_drops_unrelated_queries_relative_to_random_passages():
    rng = np.random.default_rng(0)
    n, dim = 40, 16
    passages = rng.normal(size=(n, dim))
    queries = passages + 0.3 * rng.normal(size=(n, dim))  # related: close to their own passage
    queries[0] = rng.normal(size=dim)  # unrelated to passage 0, and shares no word with it
    queries[1] = rng.normal(size=dim)  # unrelated vector, but shares a word: kept
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    pairs = [MinedPair(f"query {i} zebra", f"passage number {i}", str(i), source="heading") for i in range(n)]
    pairs[0].query, pairs[1].query = "quokka", "passage"
    pairs[2].dropped = "shared"  # already dropped: left alone
    embed_pairs.screen_by_similarity(pairs, unit(queries), unit(passages))
    assert pairs[0].dropped == "no overlap, low similarity"
    assert pairs[1].dropped is None and pairs[2].dropped == "shared"
    assert sum(p.dropped is not None for p in pairs) == 2  # related pairs sit above their floor


def test_data_from_a_kb_with_file_id_titles_keeps_summaries_and_pads_validation(kb_home, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    topics = ["payroll dates", "laptop returns", "badge access", "travel bookings", "backup restores", "leave requests",
              "expense claims", "password resets", "office moves", "pension choices"]
    for i, topic in enumerate(topics):
        body = f"This guide covers {topic}. " + " ".join(f"Step {j}: do the {topic} task carefully." for j in range(5))
        (corpus / f"f{i}.md").write_text(f"---\ntitle: doc-{i:06d}\nsummary: How {topic} work here\n---\n{body}\n")
    settings = Settings.from_env()
    upgrade(settings.database_url)
    ingest(settings, [corpus])
    with session_factory(settings)() as session:
        split = embed_pairs.data(session)
    counts = accounting(split.train, split.val)
    assert counts["title"]["mined"] == 10 and counts["title"]["dropped"] == {"id-like": 10}
    assert counts["summary"]["kept"] == 10 and counts["summary"]["kept_val"] == split.val_docs >= 1
    distractors = [p for p in split.val if p.distractor]
    assert {p.doc_key for p in distractors} == {p.doc_key for p in split.train}  # training passages fill the rankings
    assert not kept(distractors)
