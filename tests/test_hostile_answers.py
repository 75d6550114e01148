"""Hostile or broken provider answers, from the real sandbox over HTTP: a batch always settles.

An error code past int4, a NUL in an error text, a non-string or duplicate message id: each used to make the
batch's one RECORD raise, leaving every row of the batch in `sending`, also the ones really sent (for
Evolution, which echoes no callback data, reconciliation then sends them again).
"""

from __future__ import annotations

import os
import uuid

import pytest

from blocks.numbers import add_number
from campaigns.store.schema import INT4_MAX
from tasks.send import prepare_campaign, send_batch
from tests.helpers import add_contacts, add_sandbox_number, create_campaign, phones, recipients, run_campaign


def _one_batch(campaign_id: uuid.UUID) -> dict[str, dict]:
    """Prepare the campaign and send one batch, as the flow does; its rows by phone."""
    prepare_campaign.fn(campaign_id)
    send_batch.fn(campaign_id, 0)
    return {r["phone"]: r for r in recipients_of(campaign_id)}


def recipients_of(campaign_id: uuid.UUID) -> list[dict]:
    from campaigns.store.db import get_engine

    return recipients(get_engine(), campaign_id)


def _accepted(sandbox, phone: str) -> list[dict]:
    return [m for m in sandbox.messages() if m["to"] == phone.removeprefix("+")]


def test_error_codes_past_int4_and_nul_texts_settle_the_batch_and_the_sent_rows_stay_sent(db, org, sandbox):
    numbers = phones(5, start=8100)  # ...8100 to ...8104
    sandbox.configure(
        rules=[
            {"match": "8101$", "code": INT4_MAX + 1},
            {"match": "8102$", "code": 131026, "message": "no\x00such\x00user", "details": "bad\x00detail"},
            {"match": "8103$", "code": 10**30},
        ]
    )
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in numbers])
    cid = create_campaign(db, org, number)

    rows = _one_batch(cid)

    assert [r["status"] for r in rows.values()].count("sending") == 0
    for phone in (numbers[0], numbers[4]):
        [accepted] = _accepted(sandbox, phone)
        assert (rows[phone]["status"], rows[phone]["wamid"]) == ("sent", accepted["wamid"])
    huge = rows[numbers[1]]
    assert huge["status"] == "pending" and huge["error_code"] is None  # unknown code: retried later
    assert str(INT4_MAX + 1) in huge["error_message"]
    assert rows[numbers[3]]["error_code"] is None and str(10**30) in rows[numbers[3]]["error_message"]
    refused = rows[numbers[2]]
    assert (refused["status"], refused["error_code"]) == ("failed", 131026)
    assert refused["error_message"] == "nosuchuser: baddetail"
    assert "\x00" not in str(refused["attempt_log"])


def test_non_string_duplicate_and_taken_message_ids_still_record_every_send(db, org, sandbox):
    first, *numbers = phones(7, start=8200)
    sandbox.configure(answer_ids={first.removeprefix("+"): "wamid.TAKEN"})
    number = add_sandbox_number(db, org, sandbox)
    [earlier] = add_contacts(db, org, [{"phone": first, "name": "Ana"}])
    taken = create_campaign(db, org, number, audience_type="contacts", audience_filter={"contact_ids": [earlier]})
    assert _one_batch(taken)[first]["wamid"] == "wamid.TAKEN"

    hostile = [12345, {"id": "x"}, "wamid.DUP", "wamid.DUP", "wamid.TAKEN"]
    sandbox.configure(answer_ids={p.removeprefix("+"): v for p, v in zip(numbers, hostile, strict=False)})
    ids = add_contacts(db, org, [{"phone": p, "name": "Bia"} for p in numbers])
    cid = create_campaign(db, org, number, audience_type="contacts", audience_filter={"contact_ids": ids})

    rows = _one_batch(cid)

    assert {p: r["status"] for p, r in rows.items()} == dict.fromkeys(numbers, "sent")
    assert all(len(_accepted(sandbox, p)) == 1 for p in numbers)
    assert [rows[p]["wamid"] for p in numbers[:5]] == [None] * 5  # no id we could trust
    [clean] = _accepted(sandbox, numbers[5])
    assert rows[numbers[5]]["wamid"] == clean["wamid"]


@pytest.mark.flow
def test_an_evolution_answer_with_a_bad_id_sends_each_recipient_once(db, org, sandbox):
    instance = "loja-" + os.urandom(3).hex()
    numbers = phones(4, start=8300)
    sandbox.configure(
        answer_ids={
            numbers[0].removeprefix("+"): 777,
            numbers[1].removeprefix("+"): "3EB0DUP",
            numbers[2].removeprefix("+"): "3EB0DUP",
        }
    )
    with db.begin() as conn:
        number = add_number(
            conn,
            org,
            provider="evolution",
            phone_number_id=instance,
            token="k",
            app_secret="",
            verify_token="",
            api_base=sandbox.url,
            mps=200,
        )
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in numbers])
    cid = create_campaign(
        db,
        org,
        number,
        message_type="text",
        message_content={"text": "Oi {{contact.name}}"},
        template_variables={},
        delay_between_messages_seconds=0,
    )

    assert run_campaign(cid)["status"] == "completed"

    assert [len(_accepted(sandbox, p)) for p in numbers] == [1, 1, 1, 1]
    assert {r["status"] for r in recipients_of(cid)} == {"sent"}


def test_a_retry_after_that_is_no_number_of_seconds_is_ignored_not_fatal(db, org, sandbox):
    numbers = phones(3, start=8600)
    sandbox.configure(
        rules=[
            {"match": f"{n[-4:]}$", "code": 131056, "times": 1, "retry_after": value}
            for n, value in zip(numbers, ["nan", "inf", "1e308"], strict=True)
        ]
    )
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in numbers])
    cid = create_campaign(db, org, number)

    rows = _one_batch(cid)

    assert [rows[p]["status"] for p in numbers] == ["pending"] * 3  # the pair limit's own backoff instead
    assert all(rows[p]["error_code"] == 131056 and rows[p]["next_attempt_at"] is not None for p in numbers)
