"""The campaign's artifacts in the Prefect UI: a summary (markdown: status with the pause reason and what to
do, the funnel, skips by reason, failures by code) and a failures table, kept up to date in place.

The campaign's run creates them once; after that they are updated, never versioned again, by the run and
by every ingestion that touches the campaign (statuses keep arriving after it completes), so the
Artifacts page holds one version per run, not one a minute per campaign forever.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

from prefect.client.orchestration import get_client

from campaigns.reporting import run_report
from campaigns.store.db import get_engine

log = logging.getLogger(__name__)


def summary_key(campaign_id: uuid.UUID) -> str:
    return f"campaign-{campaign_id}-summary"


def failures_key(campaign_id: uuid.UUID) -> str:
    return f"campaign-{campaign_id}-failures"


def _contents(rep: dict[str, Any]) -> tuple[str, list[dict[str, Any]], str]:
    """The summary's markdown, the failures table and their description, from run_report.report."""
    table = rep["failures"] or [{"code": "", "recipients": 0, "example": "no failure"}]
    return run_report.summary_markdown(rep), table, f"{rep['campaign']['name']}: {rep['campaign']['status']}"


def _report(campaign_id: uuid.UUID) -> dict[str, Any]:
    with get_engine().connect() as conn:
        return run_report.report(conn, campaign_id)


def publish_summary(campaign_id: uuid.UUID, flow_run_id: uuid.UUID, rep: dict[str, Any]) -> None:
    """Write the campaign's summary (markdown) and failures (table) artifacts from inside its run: created once
    for that run, then updated in place. `rep` is the campaign's run_report.report, just read. From elsewhere
    (ingestion, the demo) the latest ones are updated in place by refresh_summaries, never versioned again."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    markdown, table, description = _contents(rep)
    with get_client(sync_client=True) as client:
        creators: list[tuple[str, Any, Callable[..., Any]]] = [
            (summary_key(campaign_id), markdown, create_markdown_artifact),
            (failures_key(campaign_id), table, create_table_artifact),
        ]
        for key, data, create in creators:
            latest = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            if latest and latest[0].flow_run_id == flow_run_id:
                client.update_artifact(latest[0].id, ArtifactUpdate(data=data, description=description))
            else:
                create(data, key=key, description=description)


CAMPAIGNS_A_READ = 50  # two keys each: Prefect answers at most 200 rows a read by default


def refresh_summaries(campaign_ids: Iterable[uuid.UUID]) -> None:
    """Update in place the latest summary and failures artifacts of these campaigns (those their runs made),
    reading the latest artifact of every key in one call per CAMPAIGNS_A_READ campaigns rather than one call
    per key: half of what 200 campaigns' refreshes asked of a busy Prefect server. A campaign whose run made no
    artifacts yet is left to that run."""
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    ids = sorted(set(campaign_ids), key=str)
    with get_client(sync_client=True) as client:
        for i in range(0, len(ids), CAMPAIGNS_A_READ):
            chunk = ids[i : i + CAMPAIGNS_A_READ]
            keys = [key for cid in chunk for key in (summary_key(cid), failures_key(cid))]
            found = client.read_latest_artifacts(
                artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys)), limit=len(keys)
            )
            latest = {artifact.key: artifact.latest_id for artifact in found}
            for cid in chunk:
                if summary_key(cid) not in latest and failures_key(cid) not in latest:
                    continue
                try:
                    markdown, table, description = _contents(_report(cid))
                    for key, data in ((summary_key(cid), markdown), (failures_key(cid), table)):
                        if key in latest:
                            client.update_artifact(latest[key], ArtifactUpdate(data=data, description=description))
                except Exception:  # Prefect's API briefly away: the numbers stay right in the database
                    log.warning("summary artifact of campaign %s not refreshed", cid, exc_info=True)


class SummaryRefresher:
    """Brings the summary artifacts of the campaigns ingestion touched up to date, at most every `every`
    seconds, from a thread of its own. Each refresh reads a report from Postgres and writes two artifacts a
    campaign through Prefect's API: done inside ingestion's loop, 200 touched campaigns held each pass for a
    minute behind a busy Prefect server (status freshness p95 74 s in bench.many_campaigns). The statistics
    themselves are in Postgres as soon as a pass commits; only this view of them in the UI follows a few
    seconds later."""

    def __init__(
        self, every: float, refresh: Callable[[set[uuid.UUID]], object] = refresh_summaries, most: int = 25
    ) -> None:
        self.every, self.refresh, self.most = every, refresh, most
        self.pending: dict[uuid.UUID, None] = {}  # in the order first touched: the longest waiting go first
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        context = contextvars.copy_context()  # the run's Prefect settings (its API URL) in the thread too
        self.thread = threading.Thread(target=context.run, args=(self._loop,), name="summaries", daemon=True)
        self.thread.start()

    def touch(self, campaign_ids: Iterable[uuid.UUID]) -> None:
        with self.lock:
            self.pending.update(dict.fromkeys(campaign_ids))

    def close(self, refresh_due: bool = True) -> None:
        """Stop the thread, then refresh what is still due (statuses applied in the last seconds)."""
        self.stopping.set()
        self.thread.join(timeout=self.every)  # a flush in progress finishes on its own; what is left is below
        if refresh_due:
            self.flush(most=None)

    def _loop(self) -> None:
        while not self.stopping.wait(self.every):
            self.flush(self.most)

    def flush(self, most: int | None) -> None:
        """Refresh the `most` campaigns touched longest ago (all: None); the others wait for the next flush. Each
        is two writes to Prefect, so 200 campaigns touched every few seconds would keep Prefect's server busy
        with them alone: at most `most` every `every` s bounds that at any scale, and with few campaigns each is
        still refreshed every `every` seconds."""
        with self.lock:
            due = set(list(self.pending)[:most])
            for cid in due:
                del self.pending[cid]
        if not due:
            return
        try:
            self.refresh(due)
        except Exception:  # Prefect's API away: they wait for the next flush (a completed campaign may get no
            # other touch, and its summary would keep the numbers of before its last statuses)
            log.warning("summary artifacts of %d campaigns not refreshed; tried again next", len(due), exc_info=True)
            self.touch(due)


def progress_key(campaign_id: uuid.UUID) -> str:
    return f"campaign-{campaign_id}-progress"


def progress_card(campaign_id: uuid.UUID, flow_run_id: uuid.UUID, percent: float) -> uuid.UUID:
    """The run's progress card, at `percent`: created once per run. A run resumed after a pause is a new
    process for the same run and finds the card it made before (a second card on the same run would leave the
    first stuck at the pause)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        mine = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[progress_key(campaign_id)]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            ),
            limit=1,
        )
    if mine:
        update_progress_artifact(mine[0].id, percent)
        return mine[0].id
    created = create_progress_artifact(percent, key=progress_key(campaign_id), description="Recipients processed")
    return cast(uuid.UUID, created)  # sync here: Prefect's sync-or-async call types as either
