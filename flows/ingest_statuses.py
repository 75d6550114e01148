"""ingest-statuses: stored webhook events → recipient statuses, replies, the 24 h window and opt-outs.

Requires: DATABASE_URL (or the embedded default). Deployed as `ingest-statuses/default`: every minute,
each run ingesting once a second for that minute (runs overlap by their start-up time; several
ingesters are safe, they claim with SKIP LOCKED). `campaigns ingest` drains once, now. At the end of a run
the statistics of every campaign it touched are published as a `campaign-<id>-stats` table artifact.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.send import ingest_statuses_task, refresh_statistics


@flow(name="ingest-statuses")
def ingest_statuses(run_for_seconds: float = 0.0, every_seconds: float = 1.0) -> dict[str, Any]:
    result = ingest_statuses_task(run_for_seconds, every_seconds)
    refresh_statistics(result["campaigns"])
    return result
