"""CRM write-back as one call: live offers from the decision log -> outbox -> CRM.

This is what the ``crm_writeback`` asset runs. Each run enqueues the live, CRM-bound decisions
of its window (idempotent on decision_id, so re-runs and overlapping windows add nothing) and
then dispatches everything due in the outbox, including retries left by earlier runs.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from typing import Any

import pandas as pd

from journey_pipeline.act.crm import CrmAdapter, crm_from_settings
from journey_pipeline.act.outbox import Clock, DispatchSummary, Outbox, Sleep, utc_now
from journey_pipeline.settings import Settings


@dataclass
class WritebackReport:
    """What one write-back run did: decisions read from the log, newly enqueued, the dispatch
    counts, the outbox's status counts afterwards, and the dead letters added by this run."""

    decisions_read: int
    enqueued: int
    dispatch: DispatchSummary
    status_counts: dict[str, int]
    new_dead_letters: list[dict[str, Any]] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        """Flat values for asset metadata and logs."""
        return {
            "decisions_read": self.decisions_read,
            "enqueued": self.enqueued,
            **{f"dispatch_{k}": v for k, v in self.dispatch.as_dict().items()},
            **{f"outbox_{k}": v for k, v in self.status_counts.items()},
            "new_dead_letters": len(self.new_dead_letters),
        }


def live_decisions_from_log(
    settings: Settings,
    *,
    decision_date: date | str | None = None,
) -> pd.DataFrame:
    """Live decisions with an action other than ``no_offer`` from ``decide.decision_log``
    (all of them, or those of one UTC ``decision_date``). An absent warehouse reads as empty."""
    from journey_pipeline.decide.log import read_decisions
    from journey_pipeline.warehouse import warehouse

    if not settings.warehouse_path.exists():
        return pd.DataFrame()
    start = end = None
    if decision_date is not None:
        day = pd.Timestamp(decision_date).date()
        start = datetime.combine(day, dt_time())
        end = start + timedelta(days=1)
    with warehouse(settings.warehouse_path) as con:
        frame = read_decisions(con, start=start, end=end, mode="live")
    return frame[frame["action"] != "no_offer"].reset_index(drop=True)


def write_back(
    settings: Settings,
    *,
    adapter: CrmAdapter | None = None,
    outbox: Outbox | None = None,
    decision_date: date | str | None = None,
    max_batch: int = 100,
    max_wait_s: float = 30.0,
    clock: Clock = utc_now,
    sleep: Sleep = time.sleep,
    rng: random.Random | None = None,
) -> WritebackReport:
    """Enqueue the live offers of ``decision_date`` (or the whole log) and dispatch the outbox.

    ``adapter`` defaults to :func:`crm_from_settings` and ``outbox`` to
    :meth:`Outbox.from_settings`; the rest is passed to :meth:`Outbox.dispatch`."""
    adapter = adapter if adapter is not None else crm_from_settings(settings)
    own_outbox = outbox is None
    outbox = outbox if outbox is not None else Outbox.from_settings(settings)
    try:
        decisions = live_decisions_from_log(settings, decision_date=decision_date)
        dead_before = len(outbox.dead_letters())
        enqueued = outbox.enqueue(decisions, clock=clock) if len(decisions) else 0
        summary = outbox.dispatch(
            adapter, max_batch=max_batch, clock=clock, sleep=sleep, max_wait_s=max_wait_s, rng=rng
        )
        return WritebackReport(
            decisions_read=len(decisions),
            enqueued=enqueued,
            dispatch=summary,
            status_counts=outbox.status_counts(),
            new_dead_letters=outbox.dead_letters()[dead_before:],
        )
    finally:
        if own_outbox:
            outbox.dispose()
