"""ingest-statuses: stored webhook events → recipient statuses (scheduled; `campaigns ingest` runs it now).

Requires: DATABASE_URL (or the embedded default). Deployed as `ingest-statuses/default`, every 10 s.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.send import ingest_statuses_task


@flow(name="ingest-statuses")
def ingest_statuses() -> dict[str, Any]:
    return ingest_statuses_task()
