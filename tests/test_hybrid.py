"""Hybrid search beats keyword-only and dense-only search on a small hand-written fixture (real MiniLM).

The fixture holds two kinds of queries:
  * identifier queries ("ZX-4471"): a product code, part or ticket number that occurs in exactly one document.
    Another document carries a look-alike code ("ZK-4477") that shares no full-text token with the query, so
    full-text search finds only the right document, at rank 1. The untuned dense model sees word pieces ("z",
    "##x", "44", ...) and ranks the shorter look-alike first (cosine margins 0.03-0.10 on MiniLM).
  * paraphrase queries ("evacuation practice"): the meaning of one document in words that occur in NO document
    (checked below, on each backend, stemming included), so full-text search returns nothing; dense finds them.
Reciprocal rank fusion keeps the keyword list's rank-1 identifier match on top (no other document is in that list
at all) and, for a paraphrase, the keyword list is empty so the fused ranking IS the dense ranking. So hybrid's
mean reciprocal rank is >= each single mode's by construction, and strictly greater than both here: keyword
3/8 = 0.375, dense (3 x 1/2 + 5)/8 = 0.8125, hybrid 1.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kb_pipeline.enrich.shared_pass import enrich, load_task_models
from kb_pipeline.indexing.sync import load_live_index
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.search.hybrid import MAX_QUERY_TERMS, query_terms, search
from kb_pipeline.store.db import session_factory
from kb_pipeline.training.metrics import mrr_at_k
from tiny_models import single_threaded, tiny_bert_backbone

DOCS = {
    # identifier documents, each with a look-alike whose code shares no full-text token with the query
    "firmware": "Firmware ZX-4471 fixes a memory leak in the temperature sensor driver.",
    "old-board": "Model ZK-4477 is the older sensor board.",
    "hinge": "Part QM-9083 is the replacement hinge for the whiteboard in meeting room four.",
    "spare-hinge": "Part QN-9088 is a spare whiteboard hinge.",
    "ticket": "Ticket INC-77215 tracks the outage of the payroll export job last Monday.",
    "closed-ticket": "Ticket IC-77255 is closed.",
    # everyday documents, found by meaning
    "vpn": "Install the corporate VPN client, sign in with your badge number and approve the push prompt on "
           "your phone.",
    "bicycle": "Staff who ride a bicycle to the office receive a monthly allowance of forty euros, paid with "
               "the salary.",
    "parents": "New parents may take up to sixteen weeks away at full pay after a birth or an adoption.",
    "alarm": "Twice a year the alarm sounds and everyone leaves the building by the nearest stairs, then gathers in "
             "the car park.",
    "espresso": "The espresso machine on the third floor is descaled every Friday; report leaks to facilities.",
    "receipts": "Hotel and train receipts must be uploaded within thirty days; claims above five hundred euros need a "
                "director's approval.",
}
IDENTIFIER_QUERIES = {"ZX-4471": "firmware", "QM-9083": "hinge", "INC-77215": "ticket"}
PARAPHRASE_QUERIES = {
    "cycling commuters cash": "bicycle",
    "maternity paternity absence": "parents",
    "evacuation practice": "alarm",
    "coffee appliance cleaning": "espresso",
    "encrypted tunnel login": "vpn",
}
MODES = ("keyword", "dense", "hybrid")


def write_fixture(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (root / f"{name}.md").write_text(f"---\ntitle: Note {name}\n---\n{text}\n", encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():  # a busy 2-core box runs MiniLM faster on one thread than on two
        yield


@pytest.mark.slow
def test_hybrid_beats_keyword_and_dense_on_mean_reciprocal_rank(settings, tmp_path):
    ingest(settings, [write_fixture(tmp_path / "notes")])
    models = load_task_models(settings)  # no trained adapters: the untuned MiniLM backbone embeds
    assert models.embed_key.startswith("backbone:")
    enrich(settings, models=models)
    index = load_live_index(settings, models.embed_key)

    queries = {**IDENTIFIER_QUERIES, **PARAPHRASE_QUERIES}
    reciprocal: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
    with session_factory(settings)() as session:
        for query, target in queries.items():
            for mode in MODES:
                results = search(session, query, k=10, mode=mode, index=index, embed=models.embed)
                names = [Path(r["path"]).stem for r in results]
                if mode == "keyword" and query in PARAPHRASE_QUERIES:
                    assert names == [], f"paraphrase {query!r} shares a word with {names}: not dense-only"
                if mode == "keyword" and query in IDENTIFIER_QUERIES:
                    assert names == [target], f"identifier {query!r} should match exactly {target}: {names}"
                reciprocal[mode][query] = mrr_at_k(names, {target}, 10)

    mrr = {mode: sum(reciprocal[mode].values()) / len(queries) for mode in MODES}
    detail = {mode: {q: round(v, 3) for q, v in reciprocal[mode].items()} for mode in MODES}
    # Each mode fails where the fixture says it must; hybrid keeps the best of both.
    assert all(reciprocal["keyword"][q] == 1.0 for q in IDENTIFIER_QUERIES), detail
    assert any(reciprocal["dense"][q] < 1.0 for q in IDENTIFIER_QUERIES), detail
    assert all(reciprocal["dense"][q] == 1.0 for q in PARAPHRASE_QUERIES), detail
    assert all(reciprocal["hybrid"][q] == 1.0 for q in queries), detail
    assert mrr["hybrid"] > mrr["dense"] and mrr["hybrid"] > mrr["keyword"], (mrr, detail)


def test_query_terms_are_deduplicated_and_capped():
    assert query_terms("Leave LEAVE policy, leave!") == ["leave", "policy"]
    many = query_terms(" ".join(f"w{i % 500}" for i in range(30_000)))
    assert many == [f"w{i}" for i in range(MAX_QUERY_TERMS)]


def test_a_30000_word_query_gives_results_on_both_databases(settings, tmp_path):
    """Postgres refused a tsquery of 30,000 ORed words (stack depth exceeded); any query must work."""
    ingest(settings, [write_fixture(tmp_path / "notes")])
    backbone = tiny_bert_backbone()
    models = load_task_models(settings, backbone)
    enrich(settings, models=models)
    index = load_live_index(settings, models.embed_key)
    queries = [
        "firmware ZX-4471 " + " ".join(f"filler{i}" for i in range(30_000)),  # distinct words
        " ".join(["firmware"] * 30_000),  # one word, repeated
    ]
    with session_factory(settings)() as session:
        for query in queries:
            for mode in MODES:
                results = search(session, query, k=3, mode=mode, index=index, embed=models.embed)
                assert results, (mode, query[:40])
                if mode == "keyword":
                    assert Path(results[0]["path"]).stem == "firmware"
