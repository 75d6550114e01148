"""Failures are recorded with their reason; transient ones are retried; none fails the batch."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import sqlalchemy as sa

from campaigns.control import lifecycle
from campaigns.control.services import retry_stats_of
from campaigns.errors import Conflict
from campaigns.webhooks.ingest import ingest_pending
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    create_campaign,
    phone_number_id,
    recipients,
    run_campaign,
    sent_counts,
    shrink_retry_delay,
    use_settings,
    wait_for,
)

pytestmark = pytest.mark.flow  # every test runs a campaign through the send-campaign flow


def by_phone(db, cid):
    return {r["phone"]: r for r in recipients(db, cid)}


def test_permanent_failures_are_recorded_with_code_and_reason(db, org, sandbox):
    sandbox.configure(
        rules=[
            {"match": "1$", "code": 100, "where": "sync", "message": "(#100) Invalid parameter: to"},
            {"match": "2$", "code": 131026, "where": "webhook"},
        ]
    )
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": f"+551190000000{i}", "name": "Ana"} for i in range(5)])
    cid = create_campaign(db, org, number)

    assert run_campaign(cid)["status"] == "completed"
    sandbox.drain_webhooks(timeout=10)
    ingest_pending(db)

    rows = by_phone(db, cid)
    assert rows["+5511900000001"]["status"] == "failed"
    assert rows["+5511900000001"]["error_code"] == 100
    assert "Invalid parameter" in rows["+5511900000001"]["error_message"]
    assert rows["+5511900000001"]["attempts"] == 1
    # 131026 arrives as a failed status webhook after the send was accepted.
    assert rows["+5511900000002"]["status"] == "failed"
    assert rows["+5511900000002"]["error_code"] == 131026
    assert {rows[p]["status"] for p in ("+5511900000000", "+5511900000003", "+5511900000004")} <= {
        "sent",
        "delivered",
        "read",
    }
    campaign = campaign_row(db, cid)
    assert campaign["error_count"] >= 1 and campaign["last_error_message"]


def test_transient_failures_succeed_on_a_later_attempt(db, org, sandbox):
    sandbox.configure(rules=[{"match": "7$", "code": 133004, "times": 3}])
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": f"+551190000000{i}", "name": "Ana"} for i in range(5, 9)])
    cid = create_campaign(db, org, number, retry_max_attempts=3)
    shrink_retry_delay(db, cid)

    assert run_campaign(cid)["status"] == "completed"

    row = by_phone(db, cid)["+5511900000007"]
    assert row["status"] in ("sent", "delivered", "read")
    assert row["attempts"] == 4  # the first send and the seed's three retries
    log = row["attempt_log"]
    assert [e["success"] for e in log] == [False, False, False, True]
    assert [e.get("error_code") for e in log] == [133004, 133004, 133004, None]
    assert sent_counts(sandbox)[f"pytake:{row['id']}"] == 1
    # The seed's schedule (60 s, 120 s, 240 s), base·2^(n-1) with ±20% jitter, on a base shrunk to 1 s: never
    # early. (How late is the machine's: a CI run under load once waited 29 s for a Prefect slot; bench/ times it.)
    at = [datetime.fromisoformat(e["timestamp"]) for e in log]
    first, second, third = ((b - a).total_seconds() for a, b in zip(at, at[1:], strict=False))
    assert first >= 0.8 and second >= 1.6 and third >= 3.2

    with db.connect() as conn:
        rs = retry_stats_of(conn, org, cid)
    assert rs["recipients_by_attempts"] == {"1": 3, "4": 1} and rs["total_attempts"] == 7
    assert rs["failed_attempts_by_code"] == {"133004": 3}
    assert rs["waiting_retry"]["recipients"] == 0 and rs["retries_exhausted"] == 0


def test_an_ambiguous_131000_waits_for_a_webhook_then_is_resent_and_counted_as_an_attempt(db, org, sandbox):
    sandbox.configure(rules=[{"match": "7$", "code": 131000, "times": 1}])  # the sandbox sends no webhook for it
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": f"+551190000000{i}", "name": "Ana"} for i in range(6, 8)])
    cid = create_campaign(db, org, number)

    assert run_campaign(cid)["status"] == "completed"  # after RECONCILE_GRACE_SECONDS (2 s in tests)

    row = by_phone(db, cid)["+5511900000007"]
    assert row["status"] in ("sent", "delivered", "read") and row["attempts"] == 2
    assert [e.get("error_code") for e in row["attempt_log"] if "success" in e] == [131000, None]
    assert [e["note"] for e in row["attempt_log"] if "note" in e] == [
        "outcome unknown: no status webhook within the grace period, resending"
    ]
    assert sent_counts(sandbox)[f"pytake:{row['id']}"] == 1
    with db.connect() as conn:
        rs = retry_stats_of(conn, org, cid)
    assert rs["recipients_by_attempts"] == {"1": 1, "2": 1} and rs["total_attempts"] == 3
    assert rs["failed_attempts_by_code"] == {"131000": 1}  # the note is not a failed attempt


def test_an_outcome_that_stays_unknown_is_not_resent_forever(db, org, sandbox):
    sandbox.configure(rules=[{"match": "7$", "code": 131000}])  # every time, and never a webhook
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000007", "name": "Ana"}])
    cid = create_campaign(db, org, number, retry_max_attempts=1)

    assert run_campaign(cid)["status"] == "completed"  # two grace periods (2 s in tests), then it gives up

    row = by_phone(db, cid)["+5511900000007"]
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert row["error_message"] == "retries exhausted after 2 attempts: outcome unknown, no status webhook"
    assert [e.get("error_code") for e in row["attempt_log"] if "success" in e] == [131000, 131000]


def test_a_campaign_level_code_in_a_failed_webhook_pauses_the_campaign(db, org, sandbox):
    # Accepted at send time, then reported failed by webhook: Meta's way for payment and template problems.
    sandbox.configure(rules=[{"match": "0001$", "code": 131042, "where": "webhook"}])
    number = add_sandbox_number(db, org, sandbox, mps=10)
    add_contacts(db, org, [{"phone": f"+55119000{i:05d}", "name": "Ana"} for i in range(1, 201)])  # 20 s of sending
    cid = create_campaign(db, org, number)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_campaign, cid)
        wait_for(lambda: len(sandbox.messages()) >= 5, timeout=60)
        assert sandbox.drain_webhooks(timeout=20)
        ingest_pending(db)  # what the ingest-statuses flow does every second
        result = run.result(timeout=60)
        assert result["status"] == "paused"

    campaign = campaign_row(db, cid)
    assert (campaign["paused_reason"], campaign["last_error_message"][:8]) == ("payment", "(131042)")
    # Its run is not a green Completed: with no deployment to come back to it ends Cancelled, named Paused,
    # saying why and what to do (a served run is Suspended instead: test_console.py).
    assert (result["state"], result["state_name"]) == ("CANCELLED", "Paused")
    assert "paused (payment): (131042)" in result["message"] and "fix the payment method" in result["message"]
    rows = by_phone(db, cid)
    assert (rows["+5511900000001"]["status"], rows["+5511900000001"]["error_code"]) == ("failed", 131042)
    assert sum(r["status"] == "pending" for r in rows.values()) > 0  # the rest of the audience is kept


def test_retries_exhausted_fail_the_recipient_with_the_last_reason(db, org, sandbox):
    sandbox.configure(rules=[{"match": "5$", "code": 131000}, {"match": "6$", "code": 2}])
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000006", "name": "Ana"}, {"phone": "+5511900000004", "name": "Bia"}])
    cid = create_campaign(db, org, number, retry_max_attempts=1)  # one retry after the first send
    shrink_retry_delay(db, cid)

    assert run_campaign(cid)["status"] == "completed"

    row = by_phone(db, cid)["+5511900000006"]
    assert row["status"] == "failed" and row["error_code"] == 2
    assert row["error_message"].startswith("retries exhausted after 2 attempts")
    assert by_phone(db, cid)["+5511900000004"]["status"] in ("sent", "delivered", "read")
    with db.connect() as conn:
        rs = retry_stats_of(conn, org, cid)
    assert rs["retries_exhausted"] == 1 and rs["failures_by_code"] == {"2": 1}


def test_a_missing_variable_fails_only_that_recipient(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(
        db,
        org,
        [
            {"phone": "+5511900000001", "name": "Ana", "attributes": {"coupon": "BF10"}},
            {"phone": "+5511900000002", "name": "Bia"},
        ],
    )
    cid = create_campaign(db, org, number, template_variables={"body": ["{{contact.name}}", "{{contact.coupon}}"]})

    assert run_campaign(cid)["status"] == "completed"

    rows = by_phone(db, cid)
    assert rows["+5511900000002"]["status"] == "failed"
    assert rows["+5511900000002"]["error_message"] == "missing variable contact.coupon"
    assert rows["+5511900000001"]["status"] in ("sent", "delivered", "read")
    assert len(sandbox.messages()) == 1


def test_a_token_expiring_mid_campaign_pauses_it_and_resume_after_the_fix_sends_each_once(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox, token="good", mps=20)
    pnid = phone_number_id(db, number)
    add_contacts(db, org, [{"phone": f"+55119000002{i:02d}", "name": "Ana"} for i in range(40)])
    cid = create_campaign(db, org, number)

    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_campaign, cid)
        wait_for(lambda: len(sandbox.messages()) >= 10)
        sandbox.set_token(pnid, "rotated")  # Meta invalidates the token mid-campaign
        assert run.result(timeout=60)["status"] == "paused"

    campaign = campaign_row(db, cid)
    assert campaign["paused_reason"] == "auth_error"
    assert "190" in campaign["last_error_message"]
    statuses = [r["status"] for r in recipients(db, cid)]
    assert "failed" not in statuses and "pending" in statuses  # nothing pending is marked failed

    add_sandbox_number(db, org, sandbox, token="rotated", mps=20, phone_number_id=pnid)  # the new token
    with db.begin() as conn:
        lifecycle.resume(conn, org, cid)
    assert run_campaign(cid)["status"] == "completed"
    counts = sent_counts(sandbox)
    assert len(counts) == 40 and set(counts.values()) == {1}


def test_a_contact_deleted_after_the_audience_froze_is_skipped_not_stuck(db, org, sandbox):
    from tasks.send import prepare_campaign

    number = add_sandbox_number(db, org, sandbox)
    ids = add_contacts(
        db, org, [{"phone": "+5511900000001", "name": "Ana"}, {"phone": "+5511900000002", "name": "Bia"}]
    )
    cid = create_campaign(db, org, number)
    prepare_campaign.fn(cid)
    with db.begin() as conn:
        conn.execute(sa.text("delete from contacts where id = :i"), {"i": ids[0]})

    assert run_campaign(cid)["status"] == "completed"

    rows = by_phone(db, cid)
    assert rows["+5511900000001"]["status"] == "skipped"
    assert rows["+5511900000001"]["skip_reason"] == "contact_deleted"
    assert rows["+5511900000002"]["status"] in ("sent", "delivered", "read")


def test_a_circuit_breaker_pauses_after_too_many_failures_in_a_row(db, org, sandbox):
    with use_settings(circuit_breaker_failures=10, batch_size=5):
        sandbox.configure(rules=[{"match": ".*", "code": 131026}])  # e.g. a list of numbers not on WhatsApp
        number = add_sandbox_number(db, org, sandbox, mps=20)
        add_contacts(db, org, [{"phone": f"+55119000003{i:02d}", "name": "Ana"} for i in range(40)])
        cid = create_campaign(db, org, number)
        assert run_campaign(cid)["status"] == "paused"
    campaign = campaign_row(db, cid)
    assert campaign["paused_reason"] == "circuit_breaker"
    assert "in a row" in campaign["last_error_message"] and "131026" in campaign["last_error_message"]
    statuses = [r["status"] for r in recipients(db, cid)]
    assert statuses.count("failed") >= 10 and statuses.count("pending") > 0  # the rest of the list is kept


def test_a_provider_outage_is_waited_out_without_spending_attempts_or_tripping_the_breaker(
    db, org, sandbox, monkeypatch
):
    from campaigns.settings import get_settings

    monkeypatch.setenv("CIRCUIT_BREAKER_FAILURES", "10")  # the outage's refusals alone pass it
    get_settings.cache_clear()
    try:
        sandbox.configure(rules=[{"match": ".*", "code": 2, "http_status": 503}])  # "Service temporarily unavailable"
        number = add_sandbox_number(db, org, sandbox, mps=20)
        add_contacts(db, org, [{"phone": f"+55119000005{i:02d}", "name": "Ana"} for i in range(30)])
        cid = create_campaign(db, org, number, retry_max_attempts=1)  # two refusals would fail a recipient
        shrink_retry_delay(db, cid)
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(run_campaign, cid)
            # 10 refusals in a row: the provider is down; one message tries it again 1 s later, 2 s later...
            wait_for(lambda: sandbox.stats()["errors_by_code"].get(2, 0) >= 10, timeout=60)
            time.sleep(3)  # a little longer: long enough for all 30 to be refused, had the sending not stopped
            waiting = campaign_row(db, cid)
            sandbox.configure(rules=[])  # the provider is back
            result = run.result(timeout=120)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    assert result["status"] == "completed"  # by itself: the breaker did not pause it
    # Meanwhile it was running, not paused, and said why it was not sending.
    assert (waiting["status"], waiting["paused_reason"]) == ("running", None)
    assert waiting["provider_down_since"] is not None
    assert waiting["last_error_message"].startswith("provider unavailable since")
    assert "(2)" in waiting["last_error_message"] and "goes on by itself" in waiting["last_error_message"]
    counts = sent_counts(sandbox)
    assert len(counts) == 30 and set(counts.values()) == {1}
    rows = recipients(db, cid)
    assert {r["status"] for r in rows} <= {"sent", "delivered", "read"}
    # No recipient spent an attempt on the outage; every refusal is still in its recipient's attempt log.
    assert {r["attempts"] for r in rows} == {1}
    refusals = [e for r in rows for e in r["attempt_log"] if e.get("error_code") == 2]
    assert len(refusals) == sandbox.stats()["errors_by_code"][2] and not any(e["success"] for e in refusals)
    campaign = campaign_row(db, cid)
    assert (campaign["provider_down_since"], campaign["provider_probe_at"]) == (None, None)


def test_a_template_error_fails_one_recipient_but_pauses_when_every_recipient_fails_alike(db, org, sandbox):
    sandbox.configure(rules=[{"match": "3$", "code": 132012}])  # one contact's parameter value is malformed
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": f"+551190000040{i}", "name": "Ana"} for i in range(1, 7)])
    one = create_campaign(db, org, number)
    assert run_campaign(one)["status"] == "completed"
    rows = {r["phone"]: r for r in recipients(db, one)}
    assert (rows["+5511900000403"]["status"], rows["+5511900000403"]["error_code"]) == ("failed", 132012)
    assert sum(r["status"] in ("sent", "delivered", "read") for r in rows.values()) == 5

    # The template now expects two parameters and the campaign sends one: every recipient fails alike.
    sandbox.configure(rules=[], templates={"black_friday": "Olá {{1}}, hoje {{2}}"})
    every = create_campaign(db, org, number)
    assert run_campaign(every)["status"] == "paused"
    campaign = campaign_row(db, every)
    assert campaign["paused_reason"] == "template_error" and "132000" in campaign["last_error_message"]
    assert {r["status"] for r in recipients(db, every)} == {"pending"}  # nothing burnt


def test_failures_can_be_retried_by_an_operator_but_never_to_opted_out_users(db, org, sandbox):
    sandbox.configure(rules=[{"match": "901$", "code": 131026, "times": 1}, {"match": "902$", "code": 131050}])
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": f"+5511900000{i}", "name": "Ana"} for i in (901, 902, 903)])
    cid = create_campaign(db, org, number)
    assert run_campaign(cid)["status"] == "completed"
    assert {r["phone"]: r["status"] for r in recipients(db, cid)}["+5511900000901"] == "failed"

    with db.begin() as conn:
        transition, requeued = lifecycle.retry_failed(conn, org, cid)
    assert (transition.previous, transition.status, requeued) == ("completed", "running", 1)  # not 131050
    assert run_campaign(cid)["status"] == "completed"
    rows = {r["phone"]: r for r in recipients(db, cid)}
    assert rows["+5511900000901"]["status"] in ("sent", "delivered", "read")
    assert rows["+5511900000902"]["error_code"] == 131050 and rows["+5511900000902"]["status"] == "failed"
    assert [m["to"] for m in sandbox.messages()].count("5511900000901") == 1
    with db.begin() as conn, pytest.raises(Conflict, match="No failed recipient"):
        lifecycle.retry_failed(conn, org, cid, [131026])
