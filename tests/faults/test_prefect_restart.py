"""The Prefect server restarted while a campaign runs under `campaigns serve`: sending goes on (it needs
Postgres, Redis and the provider, not Prefect), and an operator's Cancel pressed on the run afterwards still
stops it (the run's ButtonWatcher reads its own state again once the server is back)."""

from __future__ import annotations

import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import State

from campaigns.control.services import record_flow_run
from campaigns.infra.embedded import _home, _stop_prefect, ensure_prefect
from campaigns.settings import get_settings
from deployments.launch import launch_send_run
from tests.faults.harness import judge, new_campaign, sent_ids, settle_statuses, wait_accepted
from tests.helpers import campaign_row, start_campaign, wait_for

pytestmark = pytest.mark.flow  # every scenario runs `campaigns serve`

pytest_plugins = ["tests.browser"]  # the `campaigns_serve` fixture

DOWN_SECONDS = 15


def restart_prefect_server(down_seconds: float) -> None:
    """The test session's own `prefect server` (SQLite under the session's home) killed, then started again."""
    settings = get_settings()
    assert _stop_prefect(_home(settings)), "the session's Prefect server was not running"
    time.sleep(down_seconds)
    ensure_prefect(settings.model_copy(update={"prefect_api_url": None}))


@pytest.mark.heavy
def test_heavy_prefect_server_restarted_then_cancel_still_stops_the_run(db, org, sandbox, campaigns_serve):
    total = 4000
    sandbox.configure(latency_ms=50)
    cid = new_campaign(db, org, sandbox, total, mps=100, start=70_000, name=f"Natal {uuid.uuid4().hex[:6]}")
    start_campaign(db, org, cid)
    run_id = launch_send_run(cid)
    with db.begin() as conn:
        record_flow_run(conn, org, cid, run_id)
    wait_accepted(sandbox, 600, timeout=180)
    fault_at = time.time()
    restart_prefect_server(DOWN_SECONDS)
    during = len([m for m in sandbox.messages() if fault_at < m["accepted_at"] < fault_at + DOWN_SECONDS])
    back = len(sandbox.messages())
    wait_accepted(sandbox, back + 100, timeout=120)  # still sending once the server is back

    pressed_at = time.time()
    with get_client(sync_client=True) as client:  # what the UI's Cancel button does
        client.set_flow_run_state(uuid.UUID(run_id), State(type=StateType.CANCELLING, name="Cancelling"))
    wait_for(lambda: campaign_row(db, cid)["status"] != "running", timeout=60, interval=0.2)
    stopped_after = time.time() - pressed_at
    time.sleep(3.0)
    held = len(sandbox.messages())
    time.sleep(2.0)

    campaign = campaign_row(db, cid)
    settle_statuses(db, sandbox)
    verdict = judge(
        db,
        sandbox,
        cid,
        f"prefect server down {DOWN_SECONDS} s, then Cancel",
        [fault_at],
        eligible_ids=sent_ids(db, cid),
        sent_while_down=during,
        cancel_stopped_after_s=round(stopped_after, 1),
    )
    assert (campaign["status"], campaign["paused_reason"]) == ("paused", "operator"), verdict.line()
    assert len(sandbox.messages()) == held < total  # nothing leaves after the Cancel
    assert during > 0  # sending did not wait for Prefect
    assert (verdict.duplicates, verdict.stats_exact) == (0, True), verdict.line()
