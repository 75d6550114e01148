"""A number's daily cap pauses the campaign with reason rate_limit and the time it may resume; the
scheduler resumes it after the window; the budget belongs to the physical number, whoever registered it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import redis
import sqlalchemy as sa

from campaigns.control import lifecycle, tenancy
from campaigns.control.scheduler import due_campaigns
from campaigns.settings import get_settings
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    create_campaign,
    new_org,
    phones,
    run_campaign,
    sent_counts,
    start_campaign,
)


def _set_limits(db, org, number, **limits) -> None:
    with db.begin() as conn:
        tenancy.set_number_limits(conn, org, number, limits)


def _new_day(db, pnid: str) -> None:
    """What midnight UTC does to the counters: the day's window is gone (we cannot move Redis' clock), and
    the messages sent so far belong to yesterday (the limiter rebuilds a missing window from send times)."""
    r = redis.Redis.from_url(get_settings().redis_url or "")
    for key in r.scan_iter(f"cap:sandbox:{pnid}:day:*"):
        r.delete(key)
    with db.begin() as conn:
        conn.execute(
            sa.text("""
            update campaign_recipients r set sent_at = r.sent_at - interval '1 day'
            from campaigns c join whatsapp_numbers n on n.id = c.whatsapp_number_id
            where c.id = r.campaign_id and n.phone_number_id = :p and r.sent_at is not null
        """),
            {"p": pnid},
        )


@pytest.mark.flow
def test_a_daily_cap_pauses_until_midnight_and_the_scheduler_resumes_after_it(db, org, sandbox):
    pnid = str(uuid.uuid4().int)[:15]
    number = add_sandbox_number(db, org, sandbox, phone_number_id=pnid)
    _set_limits(db, org, number, per_day=5)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(8, start=8100)])
    cid = create_campaign(db, org, number)

    assert start_campaign(db, org, cid)["warnings"] == [
        "number caps: 5 of 8 recipients fit before the daily cap of 5 messages is reached (0 used); the campaign "
        "pauses there and resumes when the window ends"
    ]
    assert run_campaign(cid)["status"] == "paused"
    campaign = campaign_row(db, cid)
    assert campaign["paused_reason"] == "rate_limit"
    tomorrow = datetime.fromtimestamp((datetime.now(UTC).timestamp() // 86400 + 1) * 86400, UTC)
    assert campaign["resume_at"] == tomorrow
    assert campaign["last_error_message"].startswith("Rate limit exceeded: daily cap of 5 messages reached")
    assert len(sent_counts(sandbox)) == 5
    assert cid not in due_campaigns(db, start_campaign).to_launch  # not before its window ends
    later = create_campaign(db, org, number)  # the checklist says so before another campaign starts
    assert start_campaign(db, org, later)["warnings"] == [
        f"number caps: Rate limit exceeded: the daily cap of 5 messages is used up; the campaign will pause until "
        f"{tomorrow:%Y-%m-%dT%H:%M:%SZ} and then resume by itself"
    ]
    with db.begin() as conn:
        lifecycle.cancel(conn, org, later)

    with db.begin() as conn:  # the operator resumes early: the window is still full, so it pauses again
        lifecycle.resume(conn, org, cid)
    assert run_campaign(cid)["status"] == "paused" and len(sent_counts(sandbox)) == 5

    _new_day(db, pnid)
    with db.begin() as conn:
        conn.execute(sa.text("update campaigns set resume_at = now() - interval '1 second' where id = :c"), {"c": cid})
    assert due_campaigns(db, start_campaign).resumed == [cid]
    assert run_campaign(cid)["status"] == "completed"
    counts = sent_counts(sandbox)
    assert len(counts) == 8 and set(counts.values()) == {1}  # each recipient exactly once


@pytest.mark.flow
def test_one_physical_number_has_one_budget_across_organizations(db, org, sandbox):
    pnid = str(uuid.uuid4().int)[:15]
    mine = add_sandbox_number(db, org, sandbox, phone_number_id=pnid)
    other = new_org(db, "same-number")
    theirs = add_sandbox_number(db, other, sandbox, phone_number_id=pnid)
    _set_limits(db, org, mine, per_day=3)
    _set_limits(db, other, theirs, per_day=3)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(3, start=8200)])
    add_contacts(db, other, [{"phone": p, "name": "Bo"} for p in phones(2, start=8300)])
    assert run_campaign(create_campaign(db, org, mine))["status"] == "completed"
    assert run_campaign(create_campaign(db, other, theirs))["status"] == "paused"
    assert len(sent_counts(sandbox)) == 3


@pytest.mark.flow
def test_a_scheduled_campaign_starts_when_its_time_comes_and_a_failing_preflight_pauses_it(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2, start=8400)])
    cid = create_campaign(db, org, number)
    retired = add_sandbox_number(db, org, sandbox)
    broken = create_campaign(db, org, retired)
    with db.begin() as conn:  # the number is switched off between scheduling and the start time
        conn.execute(sa.text("update whatsapp_numbers set active = false where id = :n"), {"n": retired})
    with db.begin() as conn:
        for campaign in (cid, broken):
            lifecycle.schedule(conn, org, campaign, datetime.now(UTC))
    due = due_campaigns(db, start_campaign)
    assert cid in due.started and broken in due.refused
    assert campaign_row(db, cid)["status"] == "running"
    assert run_campaign(cid)["status"] == "completed"
    refused = campaign_row(db, broken)
    assert (refused["status"], refused["paused_reason"]) == ("paused", "preflight_failed")
    assert "inactive" in refused["last_error_message"]


@pytest.mark.flow
def test_a_portfolio_limit_counts_unique_recipients_across_its_numbers(db, org, sandbox):
    with db.begin() as conn:
        portfolio = tenancy.add_portfolio(conn, org, "main-" + uuid.uuid4().hex[:6], 5)
    first, second = add_sandbox_number(db, org, sandbox), add_sandbox_number(db, org, sandbox)
    for number in (first, second):
        _set_limits(db, org, number, portfolio_id=portfolio)
    p = phones(6, start=8500)
    add_contacts(
        db,
        org,
        [{"phone": x, "name": "Ana", "tags": ["a"]} for x in p[:3]]
        + [{"phone": x, "name": "Bo", "tags": ["b"]} for x in p[1:]],
    )
    a = create_campaign(db, org, first, audience_type="tags", audience_filter={"tags": ["a"]})
    b = create_campaign(db, org, second, audience_type="tags", audience_filter={"tags": ["b"]})
    assert run_campaign(a)["status"] == "completed"  # 3 unique recipients in the last 24 h

    started = start_campaign(db, org, b)  # preflight tells how many fit
    assert any("2 of 5 recipients fit" in w for w in started["warnings"]), started["warnings"]
    assert run_campaign(b)["status"] == "paused"
    paused = campaign_row(db, b)
    assert paused["paused_reason"] == "rate_limit" and "unique recipients" in paused["last_error_message"]
    assert paused["resume_at"] > datetime.now(UTC)
    # p[1], p[2] were already in the window (free); p[3], p[4] filled it; p[5] waits.
    sent = {m["to"] for m in sandbox.messages()}
    assert sent == {x.lstrip("+") for x in p[:5]}


def test_the_estimate_in_the_first_seconds_uses_the_rate_since_the_start(db, org, sandbox):
    from campaigns.control.services import progress_of

    number = add_sandbox_number(db, org, sandbox, mps=1000)
    cid = create_campaign(db, org, number)
    with db.begin() as conn:  # 5 s into the campaign: 500 sent, 1,000 to go, at 100 msg/s
        conn.execute(
            sa.text("update campaigns set status = 'running', started_at = now() - interval '5 s' where id = :c"),
            {"c": cid},
        )
        conn.execute(
            sa.text("""
            insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, sent_at)
            select :c, :o, gen_random_uuid(), '+55119' || g, case when g <= 500 then 'sent' else 'pending' end,
                   case when g <= 500 then now() - interval '2 s' end
            from generate_series(1, 1500) g
        """),
            {"c": cid, "o": org},
        )
    with db.connect() as conn:
        eta = progress_of(conn, org, cid)["estimated_remaining_time"]
    assert eta == "00:00:10"  # not 00:01:00 (500 in a 30 s window)


@pytest.mark.flow
def test_the_scheduler_flow_launches_a_send_campaign_run_for_what_is_due(db, org, sandbox):
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    from flows.campaign_scheduler import campaign_scheduler
    from flows.send_campaign import send_campaign as send_flow

    deployment_id = send_flow.to_deployment(name="default").apply()  # registered, not served: runs stay queued
    try:
        number = add_sandbox_number(db, org, sandbox)
        add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(1, start=8700)])
        cid = create_campaign(db, org, number)
        with db.begin() as conn:
            lifecycle.schedule(conn, org, cid, datetime.now(UTC))
        assert str(cid) in campaign_scheduler()["started"]

        async def launched() -> list[dict]:
            async with get_client() as client:
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["default"]))
                )
                return [r.parameters for r in runs if r.deployment_id == deployment_id]

        assert {"campaign_id": str(cid)} in asyncio.run(launched())
    finally:

        async def remove() -> None:
            async with get_client() as client:
                await client.delete_deployment(deployment_id)

        asyncio.run(remove())
