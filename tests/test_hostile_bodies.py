"""Campaign bodies: whatever JSON a client sends, a campaign is created that can render, or the API answers
422 naming the field; never a 500, and never a campaign whose batches strand their rows in `sending`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns import api_tokens
from campaigns.api import create_app
from campaigns.control.models import CampaignCreate
from campaigns.infra.asgi_thread import ThreadedServer
from campaigns.sending.rendering import RenderError, contact_values, render_template, render_text
from tasks.send import prepare_campaign, send_batch
from tests.helpers import add_contacts, add_sandbox_number, create_campaign, phones, recipients

TEMPLATE = {
    "name": "Black Friday",
    "message_type": "template",
    "message_content": {"template_name": "black_friday", "language": "pt_BR"},
}


@pytest.fixture
def api(db, org, sandbox) -> Iterator[tuple[httpx.Client, uuid.UUID]]:
    """The real API over HTTP, a token of the organization and one of its numbers."""
    server = ThreadedServer(create_app(lambda cid: "not-launched", db=db)).start()
    with db.begin() as conn:
        token = api_tokens.issue(conn, org, "org_admin")[1]
    number = add_sandbox_number(db, org, sandbox)
    with httpx.Client(
        base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        yield http, number
    server.stop()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"template_variables": {"buttons": [1]}}, "template_variables.buttons[0]"),
        ({"template_variables": {"header": 5}}, "template_variables.header"),
        ({"template_variables": {"body": [{"x": 1}]}}, "template_variables.body[0]"),
        ({"template_variables": {"body": ["{{contact.name"]}}, "template_variables.body[0]"),
        (
            {"template_variables": {"buttons": [{"sub_type": "call", "payload": "x"}]}},
            "template_variables.buttons[0].sub_type",
        ),
        (
            {"template_variables": {"buttons": [{"index": "first", "payload": "x"}]}},
            "template_variables.buttons[0].index",
        ),
        ({"template_variables": {"bodyy": ["x"]}}, "template_variables.bodyy"),
        ({"name": "Black\x00Friday"}, "name"),
        ({"description": "a\x00b"}, "description"),
        ({"message_content": {"template_name": "bf", "x": {"y": ["\x00"]}}}, "message_content.x.y[0]"),
        ({"audience_type": "tags", "audience_filter": {"tags": ["vip\x00"]}}, "audience_filter.tags[0]"),
    ],
)
def test_a_body_that_could_not_render_or_be_stored_is_refused_naming_its_field(api, fields, named):
    http, number = api
    r = http.post("/campaigns", json={**TEMPLATE, "whatsapp_number_id": str(number), **fields})
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"detail", "errors"}
    assert r.json()["errors"][0].startswith(named + ":"), r.json()


def test_template_variables_in_every_documented_shape_are_accepted(api):
    http, number = api
    variables = {
        "header": ["{{contact.first_name}}"],
        "body": {"name": "{{contact.name|cliente}}", "n": 3},
        "buttons": [
            {"index": 0, "sub_type": "quick_reply", "payload": "stop"},
            {"index": "1", "sub_type": "url", "text": "{{contact.phone}}"},
        ],
    }
    r = http.post("/campaigns", json={**TEMPLATE, "whatsapp_number_id": str(number), "template_variables": variables})
    assert r.status_code == 201, r.text
    assert r.json()["template_variables"] == variables


def test_a_recipient_whose_message_cannot_render_fails_alone_and_no_row_stays_sending(db, org, sandbox):
    """The contact's attributes come from the main app: a JSON array there once raised out of the batch."""
    number = add_sandbox_number(db, org, sandbox)
    good, odd = phones(2, start=8400)
    add_contacts(db, org, [{"phone": good, "name": "Ana"}, {"phone": odd, "name": "Bia", "attributes": [1, 2]}])
    cid = create_campaign(db, org, number)
    prepare_campaign.fn(cid)

    send_batch.fn(cid, 0)

    rows = {r["phone"]: r for r in recipients(db, cid)}
    assert rows[good]["status"] == "sent"
    assert rows[odd]["status"] == "failed" and rows[odd]["error_message"].startswith("cannot render")
    assert [m["to"] for m in sandbox.messages()] == [good.removeprefix("+")]


def test_a_stored_campaign_with_malformed_template_variables_fails_its_recipients_not_the_batch(db, org, sandbox):
    """Campaigns created before the check (or written by the main app) may hold any JSON."""
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(3, start=8500)])
    cid = create_campaign(db, org, number)
    with db.begin() as conn:
        conn.execute(
            sa.text("update campaigns set template_variables = cast(:v as jsonb) where id = :c"),
            {"v": json.dumps({"buttons": [1], "header": 5}), "c": cid},
        )
    prepare_campaign.fn(cid)

    send_batch.fn(cid, 0)

    rows = recipients(db, cid)
    assert {r["status"] for r in rows} == {"failed"}
    assert all("template_variables" in r["error_message"] for r in rows)
    assert sandbox.messages() == []


# -- property: any JSON body ------------------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12
)
ODD = ["{{contact.name", "{{ }}", "", "\x00", "a\x00b", "\ud800", "a" * 5000, "{{contact.x}} {{"]


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` three times in four: enough valid parts survive for bodies to be created, not only refused."""
    return st.integers(0, 3).flatmap(lambda i: bad if i == 0 else good)


TEXT = st.sampled_from(["{{contact.name}}", "{{contact.city|SP}}", "Oi {{contact.first_name}}", "Olá"]) | st.text()
PARAM = mostly(TEXT | st.integers(0, 99), st.sampled_from(ODD) | JSON)
PARAMS = mostly(
    st.lists(PARAM, max_size=3) | st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), PARAM, max_size=3),
    JSON,
)
INDEX = mostly(st.integers(0, 9) | st.sampled_from(["0", "9"]), st.integers(-2, 12) | JSON)
BUTTON = mostly(
    st.fixed_dictionaries({"sub_type": st.just("quick_reply"), "payload": PARAM}, optional={"index": INDEX})
    | st.fixed_dictionaries({"sub_type": st.just("url"), "text": PARAM}, optional={"index": INDEX}),
    st.fixed_dictionaries(
        {},
        optional={
            "index": INDEX,
            "sub_type": st.sampled_from(["call"]) | JSON,
            "payload": PARAM,
            "text": PARAM,
            "extra": JSON,
        },
    )
    | JSON,
)
VARIABLES = mostly(
    st.fixed_dictionaries(
        {}, optional={"header": PARAMS, "body": PARAMS, "buttons": mostly(st.lists(BUTTON, max_size=2), JSON)}
    ),
    st.dictionaries(st.sampled_from(["header", "body", "buttons", "other"]), JSON) | JSON,
)
CONTENT = st.fixed_dictionaries(
    {"template_name": mostly(TEXT, JSON)},
    optional={"text": PARAM, "language": mostly(st.just("en_US"), JSON), "more": JSON},
)
FIELDS = {
    "name": mostly(st.text(min_size=1, max_size=20), JSON),
    "description": mostly(st.text(), JSON),
    "message_type": mostly(st.sampled_from(["text", "template"]), JSON),
    "message_content": mostly(CONTENT, JSON),
    "template_variables": VARIABLES,
    "audience_type": mostly(st.sampled_from(["all_contacts", "tags"]), JSON),
    "audience_filter": mostly(st.fixed_dictionaries({"tags": st.lists(st.text(max_size=5), max_size=2)}), JSON),
    "messages_per_hour": mostly(st.integers(1, 3_600_000) | st.none(), JSON),
    "delay_between_messages_seconds": mostly(st.floats(0, 60), JSON),
    "scheduled_at": mostly(st.datetimes().map(str), JSON),
}


@st.composite
def bodies(draw: st.DrawFn, number: uuid.UUID) -> dict[str, Any]:
    """A working body with some fields replaced (mostly by valid values, else by any JSON), sometimes one
    dropped or an unknown one added, so both the refusals and the creations are explored."""
    body: dict[str, Any] = {**TEMPLATE, "whatsapp_number_id": str(number), "template_variables": draw(VARIABLES)}
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=3, unique=True)):
        body[name] = draw(FIELDS[name])
    if draw(st.integers(0, 4)) == 0:
        del body[draw(st.sampled_from(sorted(body)))]
    if draw(st.integers(0, 4)) == 0:
        body[draw(st.text(max_size=3) | st.sampled_from(ODD))] = draw(JSON)
    return body


def _renders_or_names_a_variable(row: dict[str, Any]) -> None:
    """What a send does for a contact with no attributes: a message, or a RenderError naming the variable."""
    values = contact_values({"name": "Ana Lima", "phone": "+5511900000001", "attributes": {"city": "Recife"}})
    try:
        if row["message_type"] == "text":
            render_text(row["message_content"]["text"], values)
        else:
            render_template(row["message_content"], row["template_variables"], values)
    except RenderError as exc:
        assert str(exc).startswith("missing variable contact.")


def _shown(key: str) -> str:
    """An unknown field's name as an error quotes it: the client's own text, NUL and lone surrogates escaped."""
    return key.encode(errors="backslashreplace").decode().replace("\x00", "\\x00") or '""'


def test_any_json_body_creates_a_campaign_that_renders_or_is_refused_naming_a_field(api):
    http, number = api
    fields = set(CampaignCreate.model_fields)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies(number))
    def check(body: dict[str, Any]) -> None:
        r = http.post("/campaigns", content=json.dumps(body).encode())
        assert r.status_code in (201, 422), r.text
        if r.status_code == 201:
            _renders_or_names_a_variable(r.json())
            return
        answer = r.json()
        assert set(answer) == {"detail", "errors"} and answer["errors"]
        extra = [_shown(key) for key in body if key not in fields]
        for error in answer["errors"]:
            named = any(error.startswith((key + ":", key + ".", key + "[")) for key in extra)  # or inside it
            assert error.startswith(tuple(fields)) or named, error

    check()
