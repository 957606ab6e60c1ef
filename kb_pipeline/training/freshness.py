"""Is a task's adapter out of date? Compare the data it was trained on with the data there is now.

Each trained version records a fingerprint per training document (document id, version and the
labels the task learns from). A task needs training when it has no adapter for this backbone yet,
or when the share of fingerprints that changed since its latest version exceeds a threshold; a
version the gate did not promote counts too, so an unpromotable adapter is not retrained every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from kb_pipeline.store.queries import latest_version
from kb_pipeline.tasks.registry import get_task
from kb_pipeline.tasks.spec import TaskSpec


def label_fingerprints(session: Session, task: TaskSpec | str) -> list[str]:
    """Sorted "document id:digest" entries, one per document the task learns from (its spec's fingerprint_rows)."""
    spec = get_task(task) if isinstance(task, str) else task
    return sorted(f"{r[0]}:{hashlib.sha256(repr(r).encode()).hexdigest()[:10]}" for r in spec.fingerprint_rows(session))


def changed_share(before: Sequence[str], now: Sequence[str]) -> float:
    """Share of documents added, removed or changed ("id:digest" entries), relative to the larger set."""
    a = dict(f.split(":", 1) for f in before)
    b = dict(f.split(":", 1) for f in now)
    changed = (a.keys() ^ b.keys()) | {doc for doc in a.keys() & b.keys() if a[doc] != b[doc]}
    return len(changed) / max(len(a), len(b), 1)


@dataclass(frozen=True)
class TrainingNeed:
    task: str
    needed: bool
    reason: str
    changed_share: float | None = None

    def as_dict(self) -> dict:
        return {"task": self.task, "needed": self.needed, "reason": self.reason, "changed_share": self.changed_share}


def training_need(session: Session, task: str, backbone_hash: str, max_changed_share: float) -> TrainingNeed:
    latest = latest_version(session, task, backbone_hash)
    if latest is None:
        return TrainingNeed(task, True, "no adapter trained on this backbone yet")
    before = (latest.history or {}).get("fingerprints")
    if before is None:
        return TrainingNeed(task, False, f"version {latest.id} predates data tracking; retrain with `kb train {task}`")
    share = changed_share(before, label_fingerprints(session, task))
    if share > max_changed_share:
        return TrainingNeed(
            task, True,
            f"{share:.0%} of its data changed since version {latest.id} (threshold {max_changed_share:.0%})",
            share,
        )
    state = "active" if latest.status == "active" else f"{latest.status}: {latest.reason}"
    return TrainingNeed(task, False, f"version {latest.id} is current ({share:.0%} changed; {state})", share)
