"""Which claimed rows' requests may have left: the in-flight mark, on real Postgres.

A row in `sending` is marked in flight (committed) before its request can leave. Recovery puts unmarked
rows (claimed, never sent) back to pending at once and lets only marked ones wait for their status
webhook; the claim's time is a token, so a batch whose rows were requeued under it neither sends nor
records them; the caps rebuilt after a Redis loss count marked rows. tests/test_crash.py kills a real worker.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import redis
import redis.asyncio as aredis
import sqlalchemy as sa

from blocks.whatsapp import load_credentials
from campaigns.control import lifecycle, tenancy
from campaigns.control.scheduler import due_campaigns
from campaigns.sending import claim, outcomes, prepare, record, runner
from campaigns.sending.engine_process import get_engine_client
from campaigns.sending.limit_history import LimitHistory
from campaigns.sending.ratelimit import Cap, LimitUsage, RateLimiter, number_key
from campaigns.sending.reconcile import reconcile
from campaigns.settings import get_settings
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    create_campaign,
    phone_number_id,
    phones,
    recipients,
    start_campaign,
    wait_for,
)

GRACE = 120.0  # the production grace period: nothing in these tests waits it out


def _claimed(db, org, sandbox, n: int, start: int) -> tuple[uuid.UUID, uuid.UUID, list[claim.Claimed]]:
    """A running campaign of `n` recipients whose batch has claimed them all (its worker then died)."""
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(n, start=start)])
    cid = create_campaign(db, org, number)
    start_campaign(db, org, cid)
    runner.build_audience_once(db, cid, "sandbox")
    with db.begin() as conn:
        rows = claim.claim(conn, cid, n)
    assert len(rows) == n
    return cid, number, rows


def _by_id(db, cid: uuid.UUID) -> dict[int, dict]:
    return {r["id"]: r for r in recipients(db, cid)}


def test_reconcile_puts_never_sent_rows_back_at_once_and_keeps_rows_in_flight_waiting(db, org, sandbox):
    cid, _, rows = _claimed(db, org, sandbox, 6, start=8100)
    left = [r.id for r in rows[:2]]  # their chunk was marked: their requests may have left
    assert claim.mark_in_flight(db, left, rows[0].claimed_at) == set(left)

    result = reconcile(db, cid, grace_seconds=GRACE)

    after = _by_id(db, cid)
    assert {i: after[i]["status"] for i in left} == dict.fromkeys(left, "sending")
    never_sent = [r.id for r in rows[2:]]
    assert {after[i]["status"] for i in never_sent} == {"pending"}
    assert {after[i]["attempts"] for i in never_sent} == {0}  # a claim that sent nothing is no attempt
    assert (result.requeued, result.waiting) == (4, 2)
    assert 0 < result.next_check_in <= GRACE


def test_a_batch_whose_rows_were_requeued_under_it_neither_sends_nor_records_them(db, org, sandbox):
    cid, _, rows = _claimed(db, org, sandbox, 3, start=8110)
    ids = [r.id for r in rows]
    stale = rows[0].claimed_at
    reconcile(db, cid, grace_seconds=GRACE)  # a new runner found this batch's runner gone
    with db.begin() as conn:
        assert [r.id for r in claim.claim(conn, cid, 3)] == ids  # and claimed them again

    assert claim.mark_in_flight(db, ids, stale) == set()  # the old batch may send none of them
    spec, _, _ = runner.load_spec(db, cid, load_credentials)
    with db.begin() as conn:
        assert record.record(conn, spec, [outcomes.Outcome(i, "pending", attempts_delta=-1) for i in ids], stale) == 0
    assert {r["status"] for r in _by_id(db, cid).values()} == {"sending"}  # still the new claim's


def test_the_engine_marks_rows_before_sending_and_never_sends_rows_its_claim_lost(db, org, sandbox):
    """The real send engine process (over its pipe) against the sandbox: a batch sends what it still
    holds, each row marked in flight before its request; rows requeued under it are not sent at all."""
    cid, _, rows = _claimed(db, org, sandbox, 4, start=8150)
    lost, kept = rows[:2], rows[2:]
    with db.begin() as conn:  # another runner requeued two of the rows and claimed them again
        conn.execute(
            sa.text("update campaign_recipients set status = 'pending' where id = any(:ids)"),
            {"ids": [r.id for r in lost]},
        )
        assert [r.id for r in claim.claim(conn, cid, 2)] == [r.id for r in lost]
    spec, provider, credentials = runner.load_spec(db, cid, load_credentials)
    messages, _ = prepare.prepare(spec, rows)

    results = get_engine_client().deliver(provider, credentials, spec, messages, rows[0].claimed_at)

    assert sorted(m["biz_opaque_callback_data"] for m in sandbox.messages()) == [f"pytake:{r.id}" for r in kept]
    assert [results[r.id] is None for r in rows] == [True, True, False, False]
    after = _by_id(db, cid)
    marked = [r.id for r in rows if after[r.id]["in_flight_at"] is not None]
    assert marked == [r.id for r in kept]
    accepted = {
        int(m["biz_opaque_callback_data"].removeprefix("pytake:")): m["accepted_at"] for m in sandbox.messages()
    }
    assert all(after[i]["in_flight_at"].timestamp() <= accepted[i] for i in marked)  # marked before it left


def test_a_mark_committed_while_reconcile_waits_for_the_rows_keeps_them_waiting(db, org, sandbox):
    """The mark and the requeue lock the same rows. Reconcile blocked behind a batch's mark must see the
    mark once it commits (the row is about to be sent, or sent): never both marked and back to pending."""
    cid, _, rows = _claimed(db, org, sandbox, 4, start=8120)
    ids = [r.id for r in rows]
    with db.connect() as batch:
        batch.execute(claim.MARK_IN_FLIGHT, {"ids": ids[:2], "claimed_at": rows[0].claimed_at})  # not committed
        with ThreadPoolExecutor(1) as pool:
            pending_reconcile = pool.submit(reconcile, db, cid, GRACE)
            wait_for(lambda: _blocked_on_a_lock(db), timeout=20)
            batch.commit()
            pending_reconcile.result(timeout=20)

    after = _by_id(db, cid)
    assert [after[i]["status"] for i in ids] == ["sending", "sending", "pending", "pending"]


def _blocked_on_a_lock(db) -> bool:
    with db.connect() as conn:
        return bool(
            conn.execute(
                sa.text("""
            select count(*) from pg_stat_activity
            where datname = current_database() and wait_event_type = 'Lock'
              and query like '%update campaign_recipients%'
        """)
            ).scalar_one()
        )


def test_caps_rebuilt_after_a_redis_loss_count_rows_in_flight_but_not_rows_never_sent(db, org, sandbox):
    cid, number, rows = _claimed(db, org, sandbox, 5, start=8130)
    with db.begin() as conn:
        portfolio = tenancy.add_portfolio(conn, org, "main-" + uuid.uuid4().hex[:6], 1000)
        tenancy.set_number_limits(conn, org, number, {"portfolio_id": portfolio})
    in_flight = rows[:3]
    claim.mark_in_flight(db, [r.id for r in in_flight], rows[0].claimed_at)
    since = (datetime.now(UTC) - timedelta(hours=1)).timestamp()

    history = LimitHistory(db)

    assert history.caps_used(number_key("sandbox", phone_number_id(db, number)), [since]) == [3]  # was 0
    assert sorted(history.portfolio_used(str(portfolio), since)) == sorted(r.phone for r in in_flight)  # was none


def test_a_cap_lost_while_a_batch_waits_for_its_slots_still_counts_what_the_batch_sends(db, org, sandbox):
    """A batch takes from the number's caps just before it marks its rows, not while it queues for its slots:
    a counter Redis lost meanwhile, rebuilt from Postgres by another campaign's take, then counts them."""
    cid, number, rows = _claimed(db, org, sandbox, 6, start=8160)
    with db.begin() as conn:
        tenancy.set_number_limits(conn, org, number, {"per_hour": 100})
    spec, provider, credentials = runner.load_spec(db, cid, load_credentials)
    messages, _ = prepare.prepare(spec, rows)
    [hour] = spec.caps()
    client = redis.Redis.from_url(get_settings().redis_url or "")
    number_rate = spec.limits(get_settings().rate_headroom)[0].key
    engine = get_engine_client()
    assert engine.deliver(provider, credentials, spec, [], rows[0].claimed_at) == {}  # its process is up
    seconds, micros = client.time()
    busy_until = (seconds + 3) * 1_000_000 + micros  # the number's next 3 s are another campaign's
    client.set(number_rate, busy_until, px=60_000)

    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(engine.deliver, provider, credentials, spec, messages, rows[0].claimed_at)
        wait_for(lambda: int(client.get(number_rate) or 0) > busy_until, message="the batch never reserved its slots")
        client.delete(f"{hour.key}:{client.time()[0] // hour.window_s}")  # Redis lost the hour's counter
        assert _take_one(db, hour).count == 1  # another campaign on the number rebuilds the hour from Postgres
        results = batch.result(timeout=60)

    assert all(result is not None and result.ok for result in results.values())
    assert LimitUsage(client).caps([hour])[0][0] == 7  # was 1: the batch's 6, taken before the loss, uncounted


def _take_one(db, cap: Cap):
    async def take():
        client = aredis.Redis.from_url(get_settings().redis_url or "")
        try:
            return await RateLimiter(client, LimitHistory(db)).take([cap], 1)
        finally:
            await client.aclose()

    return asyncio.run(take())


def test_the_scheduler_cancels_a_cancelled_campaigns_never_sent_rows_at_once(db, org, sandbox):
    cid, _, rows = _claimed(db, org, sandbox, 3, start=8140)
    claim.mark_in_flight(db, [rows[0].id], rows[0].claimed_at)
    with db.begin() as conn:
        lifecycle.cancel(conn, org, cid)  # its runner stops with the cancel; nobody else reconciles it

    due_campaigns(db, start_campaign)

    after = _by_id(db, cid)
    assert [after[r.id]["status"] for r in rows] == ["sending", "cancelled", "cancelled"]
