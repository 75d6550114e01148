"""Thin Prefect tasks over the plain send-path functions."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal

from blocks.whatsapp import fresh_credentials, load_credentials
from campaigns.control.services import limit_usage, ping_redis
from campaigns.sending import batch, runner
from campaigns.sending.engine_process import engine_stopped, get_engine_client
from campaigns.sending.providers import OutboundMessage, SendResult
from campaigns.settings import get_settings
from campaigns.store.db import get_engine
from campaigns.webhooks.ingest import IngestResult, ingest_for
from campaigns.webhooks.retention import prune_expired_events
from tasks.artifacts import SummaryRefresher

log = logging.getLogger(__name__)
SUMMARY_EVERY_SECONDS = 5.0


@task(name="prepare-campaign", cache_policy=NO_CACHE)
def prepare_campaign(campaign_id: uuid.UUID) -> runner.Prepared:
    """Preflight, mark running, build the audience once; credentials are read afresh (a fixed token)."""
    return runner.prepare(get_engine(), campaign_id, fresh_credentials, ping_redis, usage=limit_usage())


SEND_RETRIES, SEND_RETRY_DELAY_SECONDS = 2, 5.0  # a batch that raised is tried again, claiming only rows still pending


def retry_batch(*_: Any) -> bool:
    """Retry a failed batch, except when the send engine was stopped with its process (`serve` stopping)."""
    return not engine_stopped()


def send_one_batch(campaign_id: uuid.UUID, probe: bool = False) -> dict[str, Any]:
    """Claim, send and record one batch (`probe`: one row, to a provider the campaign waits for). A retry
    claims only rows still pending: never a double send. A plain call: a paced campaign's wave is one of these,
    not a task run (flows/send_campaign.py)."""
    db = get_engine()
    settings = get_settings()
    spec, provider, credentials = runner.load_spec(db, campaign_id, load_credentials)
    engine = get_engine_client()

    def deliver(messages: list[OutboundMessage], claimed_at: datetime) -> dict[int, SendResult | None]:
        return engine.deliver(provider, credentials, spec, messages, claimed_at)

    return batch.send_batch(db, deliver, spec, settings.batch_size, settings.rate_headroom, probe).as_dict()


@task(
    name="send-batch",
    cache_policy=NO_CACHE,
    retries=SEND_RETRIES,
    retry_delay_seconds=SEND_RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_batch,
    task_run_name="send-batch-{batch_no}",
)
def send_batch(campaign_id: uuid.UUID, batch_no: int, probe: bool = False) -> dict[str, Any]:
    """One batch of a wave, as a task run: a fast campaign's waves map these over the run's threads."""
    return send_one_batch(campaign_id, probe)


@task(name="ingest-statuses", cache_policy=NO_CACHE)
def ingest_statuses_task(run_for_seconds: float = 0.0, every_seconds: float = 1.0) -> dict[str, Any]:
    """Ingest for the run's time; the summary artifacts of the campaigns it touched are brought up to date in
    place by a thread of their own (SummaryRefresher), so no pass of ingestion waits for Prefect's API."""
    total = IngestResult()
    if pruned := prune_expired_events(get_engine()):  # once a run (every ten minutes served): cheap when none
        log.info("deleted %d applied webhook events past their retention (WEBHOOK_RETENTION_DAYS)", pruned)
    summaries = SummaryRefresher(SUMMARY_EVERY_SECONDS)

    def one_pass(applied: IngestResult) -> None:
        total.add(applied)
        summaries.touch(applied.campaigns)

    stopping = False
    try:
        ingest_for(get_engine(), run_for_seconds, every_seconds, on_pass=one_pass)
    except TerminationSignal:  # `serve` stopping: what was applied is committed; end the run cleanly
        log.info("ingestion stopped with its runner after %d events", total.events)
        stopping = True
    finally:
        # Stopping, the last summaries are left to the next ingestion: two hundred of them are a minute of calls
        # to a busy Prefect server, and `serve` would wait for them.
        summaries.close(refresh_due=not stopping)
    return {
        **{k: v for k, v in total.__dict__.items() if k != "campaigns"},
        "campaigns": [str(c) for c in total.campaigns],
    }
