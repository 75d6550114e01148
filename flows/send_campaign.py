"""send-campaign: a campaign from its audience to every recipient, exactly once.

Requires: DATABASE_URL, REDIS_URL, PREFECT_API_URL (or the embedded defaults); one
`whatsapp-number-credentials` block per number; the global concurrency limit `whatsapp-send-batches`
(created on first use if missing). Deployed as `send-campaign/default`.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from campaigns import lifecycle, runner, stats
from campaigns.db import get_engine
from campaigns.engine import tune_gc
from campaigns.runlock import campaign_runner_lock
from campaigns.settings import get_settings
from deployments.limits import ensure_send_limit, slots_for_run
from tasks.send import prepare_campaign, reconcile_unknown, send_batch

MAX_IDLE_SLEEP = 5.0
MAX_FAILED_WAVES = 3


def _progress(campaign_id: uuid.UUID) -> tuple[float, dict[str, int]]:
    with get_engine().connect() as conn:
        by = stats.counts_by_status(conn, campaign_id)
    total = sum(by.values()) or 1
    done = total - by.get("pending", 0) - by.get("sending", 0)
    return 100.0 * done / total, by


@flow(
    name="send-campaign",
    task_runner=ThreadPoolTaskRunner(max_workers=get_settings().parallel_batches),
    flow_run_name="send-campaign-{campaign_id}",
)
def send_campaign(campaign_id: uuid.UUID) -> dict[str, Any]:
    """Send a campaign. Safe to run again at any time: it continues where the last run stopped."""
    log = get_run_logger()
    settings = get_settings()
    db = get_engine()
    tune_gc()  # a full collection over Prefect's heap stalled every task thread for ~1.4 s (bench)
    with campaign_runner_lock(db, campaign_id) as held:
        if not held:
            log.warning("another runner is sending campaign %s; this run does nothing", campaign_id)
            return {"campaign_id": str(campaign_id), "status": "already running elsewhere"}
        runner.record_runner(db, campaign_id, flow_run.get_id())  # however it was launched: UI, API, schedule
        prepared = prepare_campaign(campaign_id)
        if prepared.refused:
            raise RuntimeError("preflight failed:\n- " + "\n- ".join(prepared.refused))
        if prepared.status != "running":
            log.info("campaign %s is %s: nothing to send", campaign_id, prepared.status)
            return {"campaign_id": str(campaign_id), "status": prepared.status}
        if prepared.audience:
            log.info("audience: %d recipients %s", prepared.total_recipients, prepared.audience)
        for warning in prepared.warnings:
            log.warning("preflight: %s", warning)
        limit_name = ensure_send_limit()
        key = f"campaign-{campaign_id}-progress"
        pct, _ = _progress(campaign_id)
        artifact = create_progress_artifact(pct, key=key, description="Recipients processed")
        batch_no = failed_waves = 0
        wave_cap = runner.batches_per_wave(db, campaign_id, settings.batch_size, settings.rate_headroom,
                                           settings.parallel_batches)
        while True:
            if not held.still_held():  # its connection died: another runner may have the campaign by now
                log.error("campaign %s: the runner lock was lost; this run stops (the next runner continues)",
                          campaign_id)
                return {"campaign_id": str(campaign_id), "status": "runner lock lost"}
            reconcile_unknown(campaign_id)
            left = runner.remaining(db, campaign_id)
            if left.status != "running":
                break
            if left.due:
                n = min(math.ceil(left.due / settings.batch_size), wave_cap)
                # Leases are renewed while held; a crashed worker's slots come back within 60 s.
                with concurrency(limit_name, occupy=slots_for_run(), lease_duration=60):
                    futures = send_batch.map(campaign_id, range(batch_no, batch_no + n))
                    batch_no += n
                    for _ in as_completed(futures):
                        update_progress_artifact(artifact, _progress(campaign_id)[0])
                failed = [f for f in futures if f.state.is_failed()]
                failed_waves = failed_waves + 1 if len(failed) == len(futures) else 0
                if failed_waves >= MAX_FAILED_WAVES:  # e.g. the credentials block is gone: stop, don't spin
                    failed[0].result()  # raises the batches' own error
                continue
            if not left.waiting_retry and not left.unknown:
                break
            # Only future retries or unknown outcomes inside their grace period: wait for the nearest.
            waits = [w for w in (left.next_retry_in, settings.reconcile_grace_seconds if left.unknown else None) if w]
            time.sleep(min([MAX_IDLE_SLEEP, *waits]))
        with db.begin() as conn:
            lifecycle.complete_if_done(conn, campaign_id)
            campaign = lifecycle.get_any_org(conn, campaign_id)
            summary = stats.stats(conn, campaign)
        pct, by = _progress(campaign_id)
        update_progress_artifact(artifact, pct)
        create_table_artifact(
            key=f"campaign-{campaign_id}-summary",
            table=[{"metric": k, "value": str(v)} for k, v in summary.items()],
            description=f"Campaign {campaign['name']}: {campaign['status']}",
        )
        log.info("campaign %s is %s: %s", campaign_id, campaign["status"], by)
        return {"campaign_id": str(campaign_id), "status": campaign["status"], **summary}


