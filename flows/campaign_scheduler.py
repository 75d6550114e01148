"""campaign-scheduler: start scheduled campaigns when their time comes; resume campaigns paused by a
number's hourly or daily cap when the window ends; launch again a running campaign whose runner is gone
(or pause it, if its flow run was cancelled in the UI or failed). Each is launched as a
send-campaign/default run.

Requires: DATABASE_URL (or the embedded default) and the send-campaign/default deployment (served by
`campaigns serve`, or `prefect deploy`). Deployed as `campaign-scheduler/default`, every 30 seconds.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from prefect import flow, get_run_logger

from blocks.whatsapp import fresh_credentials
from campaigns.control.scheduler import due_campaigns
from campaigns.control.services import record_flow_run, start_campaign
from campaigns.store.db import get_engine
from deployments.launch import PrefectRuns
from flows.console import ignore_terminal_interrupt


@flow(name="campaign-scheduler")
def campaign_scheduler(run_for_seconds: float = 0.0, every_seconds: float = 30.0) -> dict[str, Any]:
    """One pass, or a pass every `every_seconds` for `run_for_seconds` (served: ten minutes a run, so the
    scheduler's runs do not bury the campaigns' in the UI)."""
    ignore_terminal_interrupt()
    deadline = time.monotonic() + run_for_seconds
    total: dict[str, Any] = {"resumed": [], "started": [], "recovered": [], "refused": {}, "stopped": {}}
    while True:
        for key, value in _pass().items():
            if isinstance(value, dict):
                total[key].update(value)
            else:
                total[key].extend(value)
        if time.monotonic() + every_seconds > deadline:
            return total
        time.sleep(every_seconds)


def _pass() -> dict[str, Any]:
    log = get_run_logger()
    db = get_engine()
    runs = PrefectRuns()
    due = due_campaigns(db, partial(start_campaign, credentials=fresh_credentials, runs=runs), runs.state)
    for cid in due.to_launch:
        run_id = runs.launch(cid)
        with db.begin() as conn:  # the scheduler's next pass sees this run waiting, not a lost runner
            record_flow_run(conn, due.orgs[cid], cid, run_id)
        log.info("campaign %s: launched flow run %s", cid, run_id)
        if lost := due.lost_runs.get(cid):
            runs.close(lost, f"Its runner was lost (a worker or serve gone); the campaign went on in run {run_id}.")
    for cid, why in due.refused.items():
        log.warning("scheduled campaign %s paused, preflight failed: %s", cid, why)
    for cid, why in due.stopped.items():
        log.warning("campaign %s paused: %s", cid, why)
    return {
        "resumed": [str(c) for c in due.resumed],
        "started": [str(c) for c in due.started],
        "recovered": [str(c) for c in due.recovered],
        "refused": {str(c): why for c, why in due.refused.items()},
        "stopped": {str(c): why for c, why in due.stopped.items()},
    }
