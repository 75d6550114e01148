"""Races between a runner, the scheduler and an operator, each forced at the moment that matters (no sleeps):
real Postgres, the real lifecycle and reconciliation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from campaigns.control import lifecycle
from campaigns.control.scheduler import due_campaigns
from campaigns.sending.claim import claim
from campaigns.sending.reconcile import reconcile
from campaigns.sending.runner import build_audience_once
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    create_campaign,
    new_org,
    phones,
    recipients,
    start_campaign,
    use_settings,
)


def _left_in_sending(db, org, sandbox, n: int, start: int, claimed_ago: str) -> uuid.UUID:
    """A running campaign (of `org`, whose only contacts are its `n`) whose worker died after claiming and
    sending them `claimed_ago` (marked in flight): they stay in `sending`."""
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(n, start=start)])
    cid = create_campaign(db, org, number)
    start_campaign(db, org, cid)
    build_audience_once(db, cid, "sandbox")
    with db.begin() as conn:
        assert len(claim(conn, cid, n)) == n
        conn.execute(
            sa.text(
                f"update campaign_recipients set claimed_at = now() - interval '{claimed_ago}', "
                f"in_flight_at = now() - interval '{claimed_ago}' where campaign_id = :c"
            ),
            {"c": cid},
        )
    return cid


@pytest.fixture
def grace() -> Iterator[float]:
    """The production grace period (tests run with 2 s): rows claimed during the test stay inside it."""
    with use_settings(reconcile_grace_seconds=120) as settings:
        yield settings.reconcile_grace_seconds


def _cancel(db, org, cid: uuid.UUID) -> None:
    with db.begin() as conn:
        lifecycle.cancel(conn, org, cid)


def test_reconciling_a_cancelled_campaign_cancels_its_unknown_rows_instead_of_requeueing_them(db, org, sandbox):
    cid = _left_in_sending(db, org, sandbox, 3, 9800, "1 hour")
    _cancel(db, org, cid)  # the cancel's sweep finds no pending row: they are all in flight

    result = reconcile(db, cid, grace_seconds=2)

    assert result.requeued == 3
    assert {r["status"] for r in recipients(db, cid)} == {"cancelled"}  # was: pending, forever


def test_the_scheduler_settles_the_unknown_rows_a_cancelled_campaign_kept_past_the_grace(db, org, sandbox, grace):
    other = new_org(db)
    old = _left_in_sending(db, org, sandbox, 2, 9810, "1 hour")
    young = _left_in_sending(db, other, sandbox, 2, 9820, "0 seconds")  # its webhooks may still come
    for owner, cid in ((org, old), (other, young)):
        _cancel(db, owner, cid)  # its runner then stops: nobody reconciles it any more

    due_campaigns(db, start_campaign)

    assert {r["status"] for r in recipients(db, old)} == {"cancelled"}  # was: sending, forever
    assert {r["status"] for r in recipients(db, young)} == {"sending"}
