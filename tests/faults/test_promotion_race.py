"""Two promotions of the same task at the same moment must leave exactly one active version.

On Postgres (READ COMMITTED) each transaction's "retire the active one" UPDATE cannot see the other's
uncommitted new row, so without serialisation both stay active. SQLite serialises writers anyway.
"""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from kb_pipeline.store.db import session_factory
from kb_pipeline.store.schema import AdapterVersion
from kb_pipeline.training import registry


def _version(metric: float) -> AdapterVersion:
    return AdapterVersion(
        task="classify", kind="lora", backbone="tiny", backbone_hash="h", adapter_params=1, head_params=1,
        backbone_params=10, path="/nowhere", size_bytes=1, primary_metric="macro_f1",
        metrics={"macro_f1": metric}, baseline={"macro_f1": 0.1}, data_hash="d",
    )


def test_concurrent_promotions_leave_one_active_version(settings):
    Session = session_factory(settings)
    promote = registry.GateDecision(True, "first classify adapter")
    first = Session()
    first.begin()
    registry.register(first, _version(0.5), promote)  # promoted, not committed yet
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with Session.begin() as session:
                registry.register(session, _version(0.6), promote)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(timeout=1.0)  # with serialisation it waits for the first transaction
    first.commit()
    first.close()
    thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors
    with Session() as session:
        active = session.scalar(select(func.count()).where(AdapterVersion.status == "active"))
    assert active == 1
