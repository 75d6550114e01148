"""Every writer of a recipient's status against every (from, to), on real Postgres, checked against the
transition table (campaigns/store/recipients.py; the table's own consistency: tests/unit/test_transition_table.py).

For each (writer, from, to): a fresh campaign gets one row in `from`, and the writer runs aimed at `to` as
far as its inputs can aim it (record: an outcome `to`; ingestion: a webhook saying `to`; reconciliation:
the campaign cancelled, the retries exhausted or the row inside its grace period; the others write one
status whatever they are given). Then:
- an allowed move happens: the row ends in `to`, written;
- a refused one does not: the row does not end written as `to`; a row whose status the writer may not move
  at all is left unchanged, every column;
- whatever the writer did to the row is a move of the table (or nothing).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa

from campaigns.audience import build as audience
from campaigns.sending.error_codes import OPTED_OUT
from campaigns.sending.outcomes import Outcome
from campaigns.store import recipients as r
from campaigns.store.db import get_engine
from campaigns.webhooks.parse import StatusUpdate
from tests.helpers import new_org

TOKEN = datetime(2024, 1, 1, tzinfo=UTC)  # the claim's time the rows were claimed at
GRACE = 120.0


@dataclass
class Setting:
    db: sa.Engine
    org: uuid.UUID
    number: uuid.UUID
    before: dict[str, Any] = field(default_factory=dict)  # the last row made, as it was made

    def campaign(self, status: str = "running") -> uuid.UUID:
        with self.db.begin() as conn:
            return conn.execute(
                sa.text("""
                insert into campaigns (organization_id, name, whatsapp_number_id, message_type, message_content,
                                       audience_type, status, audience_frozen_at, started_at, retry_max_attempts)
                values (:o, 'transitions', :n, 'template', '{}', 'all_contacts', :s, now(), now(), 3) returning id
            """),
                {"o": self.org, "n": self.number, "s": status},
            ).scalar_one()

    def row(self, cid: uuid.UUID, status: str, **columns: Any) -> int:
        values = {
            "attempts": 1,
            "claimed_at": TOKEN,
            "in_flight_at": None,
            "error_code": 131026 if status == "failed" else None,
            **columns,
        }
        with self.db.begin() as conn:
            rid = conn.execute(
                sa.text("""
                insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, attempts,
                                                 claimed_at, in_flight_at, error_code)
                values (:c, :o, gen_random_uuid(), '+5511900000000', :s, :attempts, :claimed_at, :in_flight_at,
                        :error_code)
                returning id
            """),
                {"c": cid, "o": self.org, "s": status, **values},
            ).scalar_one()
        self.before = _row(self.db, rid)
        return rid


@pytest.fixture(scope="module")
def setting(services) -> Setting:
    db = get_engine()
    org = new_org(db, "transitions")
    with db.begin() as conn:
        number = conn.execute(
            sa.text("""
            insert into whatsapp_numbers (organization_id, provider, phone_number_id, block_name)
            values (:o, 'sandbox', :p, 'none') returning id
        """),
            {"o": org, "p": str(uuid.uuid4().int)[:15]},
        ).scalar_one()
    return Setting(db, org, number)


# Each driver makes a campaign and a row in `source`, runs its writer aimed at `aim`, and returns the row's id.
Driver = Callable[[Setting, str, str], int]


def claim(s: Setting, source: str, aim: str) -> int:
    cid = s.campaign("running")
    rid = s.row(cid, source)
    with s.db.begin() as conn:
        r.claim(conn, cid, 10)
    return rid


def record(s: Setting, source: str, aim: str) -> int:
    rid = s.row(s.campaign(), source)
    outcome = Outcome(rid, aim, entry={"note": "test"}, skip_reason="opt_out" if aim == "skipped" else None)
    with s.db.begin() as conn:
        r.record(conn, [outcome], TOKEN)
    return rid


def cancel(s: Setting, source: str, aim: str) -> int:
    cid = s.campaign("cancelled")
    rid = s.row(cid, source)
    with s.db.begin() as conn:
        r.cancel_pending(conn, cid)
    return rid


def reconcile(s: Setting, source: str, aim: str) -> int:
    cid = s.campaign("cancelled" if aim == "cancelled" else "running")
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    if aim == "sending":  # marked in flight a moment ago: inside the grace period, it waits
        rid = s.row(cid, source, claimed_at=datetime.now(UTC), in_flight_at=datetime.now(UTC))
    else:  # marked and past the grace period; with its retries used up when aimed at failed
        rid = s.row(cid, source, claimed_at=long_ago, in_flight_at=long_ago, attempts=4 if aim == "failed" else 1)
    with s.db.begin() as conn:
        r.requeue_unknown(conn, cid, GRACE)
    return rid


def ingest(s: Setting, source: str, aim: str) -> int:
    rid = s.row(s.campaign(), source)
    word = aim if aim in r.WEBHOOK_STATUSES else "sent"  # a webhook says nothing else
    failed = word == "failed"
    update = StatusUpdate(
        0, None, rid, word, datetime.now(UTC), 131049 if failed else None, "refused" if failed else None
    )
    with s.db.begin() as conn:
        r.apply_webhooks(conn, [update])
    return rid


def retry_failed(s: Setting, source: str, aim: str) -> int:
    cid = s.campaign("running")
    rid = s.row(cid, source)
    with s.db.begin() as conn:
        r.retry_failed(conn, s.org, cid, None, OPTED_OUT)
    return rid


DRIVERS: dict[str, Driver] = {
    "claim": claim,
    "record": record,
    "cancel": cancel,
    "reconcile": reconcile,
    "ingest": ingest,
    "retry_failed": retry_failed,
}
CASES = [(w, source, aim) for w in DRIVERS for source in r.STATUSES for aim in r.STATUSES]


def _row(db: sa.Engine, rid: int) -> dict[str, Any]:
    with db.connect() as conn:
        return dict(conn.execute(sa.text("select * from campaign_recipients where id = :i"), {"i": rid}).one()._mapping)


def test_every_writer_of_the_table_is_driven_here():
    assert set(DRIVERS) | {"audience"} == set(r.WRITERS)


@pytest.mark.parametrize(("writer", "source", "aim"), CASES, ids=[f"{w}:{s}->{a}" for w, s, a in CASES])
def test_a_writer_makes_exactly_the_moves_of_the_table(setting, writer, source, aim):
    table = r.WRITERS[writer]
    rid = DRIVERS[writer](setting, source, aim)
    before, after = setting.before, _row(setting.db, rid)
    assert before["id"] == rid
    changed = after != before

    if changed:  # whatever it did is a move of the table
        assert table.allows(source, after["status"]), f"{writer} moved {source} → {after['status']}"
    if table.allows(source, aim):
        assert changed and after["status"] == aim, f"{writer} did not move {source} → {aim}"
    else:
        assert not (changed and after["status"] == aim), f"{writer} moved {source} → {aim}, refused by the table"
    if source not in table.sources():
        assert not changed, f"{writer} touched a {source} row"


@pytest.mark.parametrize("aim", r.STATUSES)
def test_the_audience_creates_rows_only_as_the_table_says(setting, aim):
    cid = setting.campaign("running")
    frame = pl.DataFrame(
        {
            "contact_id": [str(uuid.uuid4())],
            "phone": ["+5511900000001"],
            "status": [aim],
            "skip_reason": ["duplicate" if aim == "skipped" else None],
        }
    )
    if r.AUDIENCE.allows(None, aim):
        assert audience.write_recipients(setting.db, cid, setting.org, frame) == 1
    else:
        with pytest.raises(ValueError, match=aim):
            audience.write_recipients(setting.db, cid, setting.org, frame)
    with setting.db.connect() as conn:
        statuses = conn.execute(sa.text("select status from campaign_recipients where campaign_id = :c"), {"c": cid})
        assert [row.status for row in statuses] == ([aim] if r.AUDIENCE.allows(None, aim) else [])


# Beyond the table: the conditions each writer puts on a move it may make.


def test_a_claim_takes_nothing_from_a_campaign_not_running(setting):
    cid = setting.campaign("paused")
    rid = setting.row(cid, "pending")
    with setting.db.begin() as conn:
        assert r.claim(conn, cid, 10) == []
    assert _row(setting.db, rid)["status"] == "pending"


def test_a_record_writes_only_rows_its_claim_still_holds(setting):
    rid = setting.row(setting.campaign(), "sending")
    with setting.db.begin() as conn:
        assert r.record(conn, [Outcome(rid, "sent")], TOKEN + timedelta(seconds=1)) == 0
    assert _row(setting.db, rid)["status"] == "sending"


def test_the_cancel_sweep_leaves_a_campaign_not_cancelled_alone(setting):
    cid = setting.campaign("running")
    rid = setting.row(cid, "pending")
    with setting.db.begin() as conn:
        assert r.cancel_pending(conn, cid) == 0
    assert _row(setting.db, rid)["status"] == "pending"


def test_retry_failed_never_requeues_an_opt_out_and_keeps_to_the_codes_asked(setting):
    cid = setting.campaign("completed")
    opted = setting.row(cid, "failed", error_code=OPTED_OUT)
    other = setting.row(cid, "failed", error_code=131049)
    with setting.db.begin() as conn:
        assert r.retry_failed(conn, setting.org, cid, [131026], OPTED_OUT) == 0
        assert r.retry_failed(conn, setting.org, cid, None, OPTED_OUT) == 1
    assert (_row(setting.db, opted)["status"], _row(setting.db, other)["status"]) == ("failed", "pending")
