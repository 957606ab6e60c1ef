"""The chunk ids a search may rank, per (groups, tag/category filters), cached while the KB does not change.

Listing them with SQL costs time linear in the KB on every query (~5 ms at 5k chunks, ~100 ms at 100k). The
list only changes when a write touches documents, chunks, ACLs, labels, predictions or reviews, and every such
write changes `search_generation.value` (database triggers, migration 0007). So each search reads that value
(one primary-key SELECT) and reuses the set computed at the same value; any other value empties the cache.

Correctness rests on two orders: the value is read BEFORE the set is computed (a set is never older than the
value it is filed under), and a set computed inside a transaction with uncommitted writes is never filed
(SQLite: such a transaction sees a fresh random value nobody else ever reads; Postgres: the value changes at
commit, so a writing transaction is detected and skips the cache). Without the triggers (a database
recreated by hand) nothing is cached and every search computes its set, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

TRIGGERS = 7  # one per table in migration 0007 (Postgres); SQLite has three per table
MAX_BYTES = 256 * 1024 * 1024  # 16 bytes a chunk: 16M chunk entries in all, e.g. sixteen 1M-chunk sets


@dataclass(frozen=True)
class Allowed:
    """The chunks a search may rank: sorted chunk ids and each one's document id (read-only arrays)."""

    chunk_ids: np.ndarray
    doc_ids: np.ndarray

    @classmethod
    def of(cls, chunk_ids: np.ndarray, doc_ids: np.ndarray) -> Allowed:
        order = np.argsort(chunk_ids, kind="stable")
        chunks, docs = np.ascontiguousarray(chunk_ids[order], dtype=np.int64), np.ascontiguousarray(doc_ids[order])
        chunks.flags.writeable = docs.flags.writeable = False
        return cls(chunks, docs)

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def contains(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of `chunk_ids` are in the set; no SQL."""
        if not len(self.chunk_ids):
            return np.zeros(len(chunk_ids), dtype=bool)
        pos = np.minimum(np.searchsorted(self.chunk_ids, chunk_ids), len(self.chunk_ids) - 1)
        return self.chunk_ids[pos] == chunk_ids

    def owners(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Document id of each of `chunk_ids` (which must be members); no SQL."""
        return self.doc_ids[np.searchsorted(self.chunk_ids, chunk_ids)]

    @property
    def nbytes(self) -> int:
        return self.chunk_ids.nbytes + self.doc_ids.nbytes


def _tracked(session: Session) -> bool:
    """True when migration 0007's triggers are all there (checked once per engine)."""
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        found = session.scalar(text(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'kb_search_generation_%'"
        ))
        return found == 3 * TRIGGERS
    if bind.dialect.name == "postgresql":
        found = session.scalar(text("SELECT count(*) FROM pg_trigger WHERE tgname = 'kb_search_generation'"))
        return found == TRIGGERS
    return False


_TRACKED: dict[str, bool] = {}


def generation(session: Session) -> int | None:
    """The KB's current search generation, or None when a set computed now must not be cached."""
    bind = session.get_bind()
    key = str(bind.url)
    if key not in _TRACKED:
        _TRACKED[key] = _tracked(session)
    if not _TRACKED[key]:
        return None
    if bind.dialect.name == "postgresql":
        row = session.execute(text(
            "SELECT value, pg_current_xact_id_if_assigned() IS NULL FROM search_generation WHERE id = 1"
        )).first()
        return int(row[0]) if row is not None and row[1] else None
    value = session.scalar(text("SELECT value FROM search_generation WHERE id = 1"))
    return None if value is None else int(value)


class AllowedSets:
    """LRU of Allowed per filter key, valid for one generation; thread-safe (the web searches concurrently)."""

    def __init__(self, compute: Callable[[Session, object], Allowed], max_bytes: int = MAX_BYTES):
        self._compute = compute
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._entries: OrderedDict[tuple, Allowed] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, session: Session, filters, key: tuple) -> Allowed:
        current = generation(session)  # first: the set below is at least this new
        if current is not None:
            with self._lock:
                if current != self._generation:
                    self._entries.clear()
                    self._generation = current
                found = self._entries.get(key)
                if found is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return found
        self.misses += 1
        allowed = self._compute(session, filters)
        if current is not None:
            with self._lock:
                if current == self._generation:
                    self._entries[key] = allowed
                    while sum(a.nbytes for a in self._entries.values()) > self._max_bytes and len(self._entries) > 1:
                        self._entries.popitem(last=False)
        return allowed

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._generation = None
