"""A platform's day at a small scale: a dozen organizations' campaigns at the seed's default pace under one
`campaigns serve`. Each waits 36 s between messages, which must cost no slot: all of them send at once, and
statuses are still applied meanwhile (deployments/dispatch.py).

Runs with the other `serve` modules, alone (see the Makefile).
"""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa
from prefect.deployments import run_deployment

from tests.browser import _settle_earlier_campaigns
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    create_campaign,
    new_org,
    phones,
    start_campaign,
    wait_for,
)
from tests.test_serve_capacity import _serve

pytestmark = [pytest.mark.flow, pytest.mark.xdist_group("serve")]

CAMPAIGNS = 12  # more than the 8 campaign slots `serve` had, each run a process


def _delivered(db: sa.Engine, campaign_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """The campaigns with a delivered (or read) status applied to at least one recipient."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.text("""
            select distinct campaign_id from campaign_recipients
            where campaign_id = any(:ids) and delivered_at is not null
        """),
            {"ids": campaign_ids},
        )
        return set(rows.scalars())


def test_a_dozen_slow_campaigns_all_send_at_once_and_statuses_keep_being_applied(db, sandbox):
    _settle_earlier_campaigns()
    campaigns = []
    for i in range(CAMPAIGNS):
        org = new_org(db, prefix="tenant")
        number = add_sandbox_number(db, org, sandbox)
        add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(20, start=100 * i)])
        # the seed's defaults: 100 messages an hour, 2 s apart
        cid = create_campaign(
            db, org, number, name=f"Slow {i}", messages_per_hour=100, delay_between_messages_seconds=2
        )
        campaigns.append((org, cid))

    with _serve():
        started = time.monotonic()
        for org, cid in campaigns:
            start_campaign(db, org, cid)
            run_deployment("send-campaign/default", parameters={"campaign_id": str(cid)}, timeout=0, as_subflow=False)

        def sending() -> set[str]:
            return {m["biz_opaque_callback_data"] for m in sandbox.messages()}

        wait_for(lambda: len(sandbox.messages()) >= CAMPAIGNS, timeout=60, interval=0.5)
        first_wave = time.monotonic() - started
        ids = [cid for _, cid in campaigns]
        # every campaign sent its first message within seconds of its start, and the pace holds: one each
        # (the next is 36 s later)
        with db.connect() as conn:
            rows = conn.execute(
                sa.text("""
                select r.campaign_id, count(*), extract(epoch from min(r.sent_at) - c.started_at)
                from campaign_recipients r join campaigns c on c.id = r.campaign_id
                where r.campaign_id = any(:ids) and r.wamid is not null group by r.campaign_id, c.started_at
            """),
                {"ids": ids},
            ).all()
        sent_by = {cid: n for cid, n, _ in rows}
        assert set(sent_by) == set(ids), f"{len(sent_by)} of {CAMPAIGNS} campaigns sent within {first_wave:.0f} s"
        assert max(sent_by.values()) <= 2, sent_by  # the pace: 100 an hour, not the number's 1,000 a second
        assert max(float(first) for _, _, first in rows) < 15  # not a whole step (36 s) late
        assert len(sending()) == len(sandbox.messages())  # each recipient once

        # ingestion runs beside them (its first run is due 15 s after start-up) and applies their statuses
        wait_for(lambda: _delivered(db, ids) == set(ids), timeout=60, interval=0.5)
