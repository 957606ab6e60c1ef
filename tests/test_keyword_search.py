"""Keyword search on SQLite skips words in more than half of the chunks and filters FTS5 rows with the cached
allowed set; neither may change what a user gets back: same chunks, same order (ties by path), nothing forbidden.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kb_pipeline.config import Settings
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.search.hybrid import Filters, Searcher, filter_key
from kb_pipeline.search.keyword import TermCounts, _sqlite_joined, keyword_hits, query_terms
from kb_pipeline.store.db import dispose_engines, session_factory, upgrade

TOPICS = ["payroll export", "badge printer", "expense claims", "vpn client", "fire drill", "espresso machine"]
FILLER = "The team said the change is in the plan for the year and the office of the group."
QUERIES = [
    "the payroll export", "The plan for the badge printer", "the the the", "expense of the vpn", "drill",
    "a plan for the year", "nothing matches zzzqx", "the espresso machine in the office",
]


@pytest.fixture
def sqlite_settings(kb_home) -> Settings:
    settings = Settings.from_env()
    assert settings.database_url.startswith("sqlite")
    upgrade(settings.database_url)
    yield settings
    dispose_engines()


def write_corpus(root: Path, count: int = 36) -> Path:
    """Documents that all share common words, some restricted to a group, some tagged; every fourth one a copy."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)] if i % 4 else TOPICS[0]  # copies of one text: ties broken by path
        acl = "acl: [finance]\n" if i % 3 == 1 else ""
        tags = "tags: [urgent]\n" if i % 5 == 2 else ""
        body = f"{FILLER} The {topic} note." if i % 4 == 0 else f"{FILLER} Note {i} on the {topic}, case {i * 7}."
        (root / f"doc-{i:02d}.md").write_text(f"---\ntitle: Doc {i}\n{acl}{tags}---\n{body}\n", encoding="utf-8")
    return root


FILTERS = {
    "anonymous": Filters(),
    "finance group": Filters(groups=("finance",)),
    "tag": Filters(tags=("urgent",), groups=("finance",)),
}


def write_late_copies(root: Path, count: int = 3) -> Path:
    """Copies of doc-00's text ingested later (higher chunk ids) under paths that sort first: ties go by path."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"copy-{i}.md").write_text(f"---\ntitle: Copy {i}\n---\n{FILLER} The {TOPICS[0]} note.\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("limit", [3, 50])
def test_keyword_hits_equal_the_full_sql_query(sqlite_settings, tmp_path, limit):
    ingest(sqlite_settings, [write_corpus(tmp_path / "docs")])
    ingest(sqlite_settings, [write_late_copies(tmp_path / "a-copies")])
    searcher = Searcher()
    with session_factory(sqlite_settings)() as session:
        for name, filters in FILTERS.items():
            allowed = searcher.allowed.get(session, filters, filter_key(filters))
            for query in QUERIES:
                expected = _sqlite_joined(session, query_terms(query), filters, limit)
                got = keyword_hits(session, query, filters, limit, allowed=allowed, counts=searcher.terms)
                assert [c for c, _, _ in got] == [c for c, _, _ in expected], (name, query)
                assert [d for _, d, _ in got] == [d for _, d, _ in expected], (name, query)
                assert [s for _, _, s in got] == pytest.approx([s for _, _, s in expected], abs=1e-4)
                assert set(c for c, _, _ in got) <= set(allowed.chunk_ids.tolist())
        # a query of nothing but common words still finds its rows (ranked as the full query ranks them)
        assert len(keyword_hits(session, "the the the", Filters(), limit, counts=searcher.terms)) == min(limit, 27)


def test_a_word_that_stops_being_common_is_searched_again(sqlite_settings, tmp_path):
    """Word counts are cached per search generation: after an ingest the next query counts again."""
    first = tmp_path / "first"
    first.mkdir()
    for name, body in {"a": "zebra stripes", "b": "zebra herd", "c": "lion pride"}.items():
        (first / f"{name}.md").write_text(f"{body}\n", encoding="utf-8")
    ingest(sqlite_settings, [first])
    counts = TermCounts()
    with session_factory(sqlite_settings)() as session:
        assert counts.common(session, ["zebra", "lion"])[0] == {"zebra"}  # in 2 of 3 chunks
        found = keyword_hits(session, "zebra lion", Filters(), 1, counts=counts)
        assert [Path(_path(session, d)).stem for _, d, _ in found] == ["c"]

    more = tmp_path / "more"
    more.mkdir()
    for i in range(7):
        (more / f"lion-{i}.md").write_text(f"lion number {i}\n", encoding="utf-8")
    ingest(sqlite_settings, [more])
    with session_factory(sqlite_settings)() as session:  # zebra: 2 of 10 chunks; lion: 8 of 10
        found = keyword_hits(session, "zebra lion", Filters(), 2, counts=counts)
        assert sorted(Path(_path(session, d)).stem for _, d, _ in found) == ["a", "b"]
        assert counts.common(session, ["zebra", "lion"])[0] == {"lion"}


def test_searcher_keyword_mode_respects_access_and_tags(sqlite_settings, tmp_path):
    ingest(sqlite_settings, [write_corpus(tmp_path / "docs")])
    searcher = Searcher()
    with session_factory(sqlite_settings)() as session:
        anonymous = searcher.search(session, "the payroll export", k=50, mode="keyword")
        finance = searcher.search(session, "the payroll export", k=50, mode="keyword", filters=FILTERS["finance group"])
        tagged = searcher.search(session, "the payroll export", k=50, mode="keyword", filters=FILTERS["tag"])
    numbers = lambda rows: {int(Path(r["path"]).stem.split("-")[1]) for r in rows}  # noqa: E731
    assert numbers(anonymous) and all(i % 3 != 1 for i in numbers(anonymous))  # no finance-only document
    assert any(i % 3 == 1 for i in numbers(finance))
    assert numbers(tagged) and all(i % 5 == 2 for i in numbers(tagged))
    shutil.rmtree(tmp_path / "docs")


def _path(session, doc_id: int) -> str:
    from kb_pipeline.store.schema import Document

    return session.get(Document, doc_id).path


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_postgres_ranks_from_the_stored_tsvector_across_edits_and_a_migration_down_and_up(settings, tmp_path):
    """Migration 0008: Postgres ranks from chunks.text_tsv (no text re-parsed per matching row); the column follows
    edits of a chunk's text, and going down to 0007 and back up keeps keyword search working."""
    from alembic import command
    from sqlalchemy import event, inspect, text

    from kb_pipeline.store.db import alembic_config, get_engine

    root = write_corpus(tmp_path / "docs")
    ingest(settings, [root])

    def hits(query: str) -> list[int]:
        with session_factory(settings)() as session:
            return [c for c, _, _ in keyword_hits(session, query, Filters(groups=("finance",)), 50)]

    engine = get_engine(settings.database_url)
    statements: list[str] = []
    listener = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    before = hits("espresso machine")
    event.remove(engine, "before_cursor_execute", listener)
    assert before and len(before) == len(hits("espresso"))  # every espresso note, and "machine" adds no other
    assert any("text_tsv" in s for s in statements) and not any("to_tsvector" in s for s in statements)
    with engine.begin() as conn:
        plan = "\n".join(r[0] for r in conn.execute(text(
            "EXPLAIN VERBOSE SELECT id, ts_rank_cd(text_tsv, q) FROM chunks, to_tsquery('english', 'espresso') q "
            "WHERE text_tsv @@ q ORDER BY 2 DESC LIMIT 5")))
        assert "to_tsvector" not in plan  # stored: nothing parsed at query time
        conn.execute(text("UPDATE chunks SET text = 'zeppelin hangar' WHERE id = :c"), {"c": before[0]})
    assert hits("zeppelin") == [before[0]] and before[0] not in hits("espresso")

    config = alembic_config(settings.database_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0007")
    with engine.connect() as conn:
        assert "text_tsv" not in {c["name"] for c in inspect(conn).get_columns("chunks")}
    upgrade(settings.database_url)
    assert hits("zeppelin") == [before[0]] and hits("espresso") == before[1:]
