"""Adapter versions: registration, the promotion gate, manual promotion and rollback.

A version becomes `active` only if it is at least as good as the active one on the same validation
data (and, for a task whose spec says `must_beat_baseline` (embed), at least as good as its baseline);
otherwise it stays a `candidate`
with the reason recorded. Exactly one version per task and backbone is active at a time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from kb_pipeline.errors import RegistryError
from kb_pipeline.store.queries import active_version, active_versions, list_versions  # noqa: F401  (the registry's reads)
from kb_pipeline.store.schema import AdapterVersion, utcnow
from kb_pipeline.tasks.registry import TASKS, get_task


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def gate(task: str, primary: str, metrics: dict, baseline: dict, active_now: dict | None) -> GateDecision:
    """Decide promotion from the new version's metrics and the active version's metrics on the same data."""
    new = float(metrics[primary])
    spec = get_task(task)
    if spec.must_beat_baseline and new < float(baseline[primary]):
        floor = float(baseline[primary])
        return GateDecision(False, f"{primary} {new:.4f} is below the baseline's {floor:.4f} ({spec.baseline})")
    if active_now is None:
        return GateDecision(True, f"first {task} adapter ({primary} {new:.4f})")
    old = float(active_now[primary])
    if new >= old:
        return GateDecision(True, f"{primary} {new:.4f} >= active {old:.4f}")
    return GateDecision(
        False, f"{primary} {new:.4f} is below the active version's {old:.4f} on the same validation data"
    )


def register(session: Session, version: AdapterVersion, decision: GateDecision) -> AdapterVersion:
    """Add a trained version; activate it if the gate said so (retiring the previous active one)."""
    version.status = "candidate"
    version.reason = decision.reason
    session.add(version)
    session.flush()
    if decision.promote:
        _activate(session, version)
    return version


def promote(session: Session, version_id: int) -> AdapterVersion:
    """Make a version active by hand (overrides the gate), retiring the current active one."""
    version = session.get(AdapterVersion, version_id)
    if version is None:
        raise RegistryError(f"no adapter version {version_id} (see `kb adapters`)")
    if version.status == "active":
        return version
    _activate(session, version)
    version.reason = f"promoted by hand; {version.reason}" if version.reason else "promoted by hand"
    return version


def rollback(session: Session, task: str, backbone_hash: str | None = None) -> AdapterVersion:
    """Retire the active version of `task` and re-activate the one that was active before it.

    Without a backbone hash, the task must have an active version on exactly one backbone.
    """
    if task not in TASKS:
        raise RegistryError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    _serialise(session, task)
    actives = [v for v in list_versions(session, task) if v.status == "active"]
    if backbone_hash is not None:
        actives = [v for v in actives if v.backbone_hash == backbone_hash]
    if not actives:
        raise RegistryError(f"no active {task} adapter to roll back")
    if len(actives) > 1:
        raise RegistryError(f"{task} has active versions on several backbones; name one with --backbone-hash")
    current = actives[0]
    backbone_hash = current.backbone_hash
    previous = session.scalars(
        select(AdapterVersion)
        .where(
            AdapterVersion.task == task,
            AdapterVersion.backbone_hash == backbone_hash,
            AdapterVersion.status == "retired",
            AdapterVersion.promoted_at.is_not(None),
            AdapterVersion.id != current.id,
        )
        .order_by(AdapterVersion.promoted_at.desc())
    ).first()
    if previous is None:
        raise RegistryError(
            f"{task} version {current.id} is the only one that was ever active; nothing to roll back to"
        )
    current.status = "retired"
    current.reason = f"rolled back; {current.reason}"
    session.flush()
    previous.status = "active"
    previous.promoted_at = utcnow()
    return previous


def _serialise(session: Session, task: str) -> None:
    """Order concurrent status changes of one task until this transaction ends.

    Under Postgres READ COMMITTED, two promotions at once each retire "the active version" without
    seeing the other's uncommitted new one, and both stay active. A transaction-scoped advisory lock
    makes the second wait, and its UPDATE then sees (and retires) the first. SQLite needs none: a
    write transaction already holds the whole database.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"kb-adapter-registry:{task}".encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _activate(session: Session, version: AdapterVersion) -> None:
    _serialise(session, version.task)
    session.execute(
        update(AdapterVersion)
        .where(
            AdapterVersion.task == version.task,
            AdapterVersion.backbone_hash == version.backbone_hash,
            AdapterVersion.status == "active",
            AdapterVersion.id != version.id,
        )
        .values(status="retired")
    )
    version.status = "active"
    version.promoted_at = utcnow()
    session.flush()
