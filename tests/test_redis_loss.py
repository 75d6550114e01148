"""Redis restarted without its data mid-campaign: the number's caps and its portfolio's 24 h window still
hold, rebuilt from the recipients' send times in Postgres. The sandbox's own record is the judge."""

from __future__ import annotations

import uuid

import pytest
import redis

from campaigns.control import lifecycle, tenancy
from campaigns.settings import get_settings
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    create_campaign,
    phones,
    run_campaign,
    sent_counts,
)

pytestmark = pytest.mark.flow  # every test runs a campaign through the send-campaign flow


def _redis_loses_everything() -> None:
    redis.Redis.from_url(get_settings().redis_url or "").flushdb()  # this test slot's own db


def _resume(db, org, cid) -> None:
    with db.begin() as conn:
        lifecycle.resume(conn, org, cid)


def _send_part_lose_redis_and_go_on(db, org, cid) -> None:
    first = run_campaign(cid)
    assert first["status"] == "paused" and campaign_row(db, cid)["paused_reason"] == "rate_limit"
    _redis_loses_everything()
    _resume(db, org, cid)  # an operator (or the scheduler, wrongly early) sends it on
    run_campaign(cid)


def test_a_daily_cap_still_holds_after_redis_lost_its_counters(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    with db.begin() as conn:
        tenancy.set_number_limits(conn, org, number, {"per_day": 5})
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(8, start=9960)])
    cid = create_campaign(db, org, number)

    _send_part_lose_redis_and_go_on(db, org, cid)

    assert len(sent_counts(sandbox)) == 5  # was 8: the day started again from zero
    row = campaign_row(db, cid)
    assert (row["status"], row["paused_reason"]) == ("paused", "rate_limit")


def test_a_portfolio_window_still_holds_after_redis_lost_it(db, org, sandbox):
    with db.begin() as conn:
        portfolio = tenancy.add_portfolio(conn, org, "main-" + uuid.uuid4().hex[:6], 5)
    number = add_sandbox_number(db, org, sandbox)
    with db.begin() as conn:
        tenancy.set_number_limits(conn, org, number, {"portfolio_id": portfolio})
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(8, start=9970)])
    cid = create_campaign(db, org, number)

    _send_part_lose_redis_and_go_on(db, org, cid)

    assert len(sent_counts(sandbox)) == 5  # was 8: the window started again empty
    assert set(sent_counts(sandbox).values()) == {1}
