"""SIGKILL of a campaign's runner, or of its send engine, at the moments that matter; `campaigns start` (with
nothing serving) supervises the runner and starts it again, the runner starts a new send engine. The
sandbox's record is the judge: every recipient accepted exactly once, statistics exact."""

from __future__ import annotations

import pytest

from campaigns.infra import faultpoints as fp
from tests.faults.harness import (
    arm,
    engine_pid,
    judge,
    new_campaign,
    pause_env,
    paused_pid,
    runner_pid,
    sigkill,
    start_from_cli,
    stop_leftovers,
    wait_accepted,
    wait_until_settled,
)
from tests.helpers import environ

pytestmark = pytest.mark.flow  # every scenario runs the send-campaign flow under `campaigns start`

# moment -> (pause point, or None to kill while requests are in flight; whose process dies)
MOMENTS = {
    "audience-build": (fp.AUDIENCE_WRITTEN, "runner"),
    "claimed-not-sent": (fp.CLAIMED, "runner"),
    "requests-in-flight": (None, "runner"),
    "answered-not-recorded": (fp.ANSWERED, "runner"),
    "between-batches": (fp.RECORDED, "runner"),
    "engine-requests-in-flight": (None, "engine"),
    "engine-answered-not-returned": (fp.ENGINE_ANSWERED, "engine"),
}


def kill_in_turn(db, org, sandbox, pause_dir, moments: list[str], total: int, mps: int, start: int) -> None:
    """One campaign; its runner (or engine) killed at each moment in turn, each time after the recovery of
    the kill before it took over."""
    sandbox.configure(latency_ms=100)  # requests in flight at every moment
    cid = new_campaign(db, org, sandbox, total, mps, start=start)
    faults: list[float] = []
    try:
        arm(pause_dir, MOMENTS[moments[0]][0] or "")
        with environ(**pause_env(pause_dir)):
            start_from_cli(db, org, cid)
        for moment in moments:
            point, whose = MOMENTS[moment]
            if point:
                arm(pause_dir, point)
                pid = paused_pid(pause_dir, point)
            else:
                wait_accepted(sandbox, total // 3)
                pid = runner_pid(cid) if whose == "runner" else engine_pid(runner_pid(cid))
            faults.append(sigkill(pid))
        status = wait_until_settled(db, cid)
    finally:
        stop_leftovers(cid)
    whose = sorted({MOMENTS[m][1] for m in moments})
    verdict = judge(db, sandbox, cid, f"kill -9 {'/'.join(whose)}: {', '.join(moments)}", faults)
    assert status == "completed", verdict.line()
    assert (verdict.duplicates, verdict.missing, verdict.stats_exact) == (0, 0, True), verdict.line()


def test_a_runner_and_an_engine_killed_at_three_moments_lose_and_repeat_nothing(db, org, sandbox, pause_dir):
    kill_in_turn(
        db,
        org,
        sandbox,
        pause_dir,
        ["audience-build", "answered-not-recorded", "engine-answered-not-returned"],
        total=600,
        mps=100,
        start=20_000,
    )


@pytest.mark.heavy
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_heavy_a_runner_or_engine_killed_loses_and_repeats_nothing(db, org, sandbox, pause_dir, moment):
    kill_in_turn(
        db, org, sandbox, pause_dir, [moment], total=1500, mps=150, start=30_000 + 2000 * list(MOMENTS).index(moment)
    )
