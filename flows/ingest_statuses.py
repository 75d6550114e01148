"""ingest-statuses: stored webhook events → recipient statuses, replies, the 24 h window and opt-outs.

Requires: DATABASE_URL (or the embedded default). Deployed as `ingest-statuses/default`: every ten
minutes, each run ingesting once a second for those ten minutes (runs overlap by their start-up time;
several ingesters are safe, they claim with SKIP LOCKED), tagged `housekeeping` so campaign runs are not
buried. `campaigns ingest` drains once, now. The summary artifact of every campaign it touches is brought
up to date in place every few seconds (tasks/artifacts.py).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.console import ignore_terminal_interrupt
from tasks.send import ingest_statuses_task


@flow(name="ingest-statuses")
def ingest_statuses(run_for_seconds: float = 0.0, every_seconds: float = 1.0) -> dict[str, Any]:
    ignore_terminal_interrupt()
    return ingest_statuses_task(run_for_seconds, every_seconds)
