"""Property-based: the webhook parser and ingestion never raise on any JSON, and never block a well-formed
event queued after a bad one.

The bodies are Meta- and Evolution-shaped with every field either plausible or anything JSON can hold
(nested values, huge integers, NULs, lone surrogates), plus arbitrary JSON and arbitrary bytes.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.store.schema import INT4_MAX, INT8_MAX
from campaigns.webhooks.ingest import ingest_pending
from campaigns.webhooks.parse import MAX_ID, RANK, ParsedEvent, parse_body
from tests.helpers import meta_change
from tests.hostile_events import assert_good_applied, events, fleet_fixture, queue, status  # noqa: F401

ODD_TEXT = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "Bia\udfff", "9" * 5000, "pytake:" + "9" * 40, "pytake:-1", "pytake:0", "١٢٣", "²"]
)
TEXT = st.text(max_size=30) | ODD_TEXT
SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
)
ANY_JSON = st.recursive(
    SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8
)


def leaf(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field as Meta sends it, or anything at all in its place."""
    return plausible | ANY_JSON


def containers(wild: bool) -> Any:
    """Objects with plausible keys. Wild: each key may be missing and each object may be anything instead;
    tame: every key is there, so that the odd leaves reach ingestion's lookups and writes."""

    def make(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        if wild:
            return leaf(st.fixed_dictionaries({}, optional=fields))
        return st.fixed_dictionaries(fields)

    return make


def meta_bodies(wamids: list[str], callbacks: list[str], pnids: list[str], wild: bool) -> st.SearchStrategy[Any]:
    obj = containers(wild)
    wamid = leaf(st.sampled_from(wamids) | TEXT)
    phone = leaf(st.from_regex(r"\A55119\d{8}\Z") | TEXT)
    timestamp = leaf(st.integers(1_700_000_000, 1_900_000_000).map(str) | TEXT)
    text = leaf(st.sampled_from(["PARAR", "oi", "VOLTAR"]) | TEXT)
    error = obj(
        code=leaf(st.sampled_from([131026, 131050, 131042, "131026", 2**31, 10**30])),
        title=text,
        message=text,
        error_data=obj(details=text),
    )
    stat = obj(
        id=wamid,
        status=leaf(st.sampled_from([*RANK, "DELIVERED", "deleted"])),
        timestamp=timestamp,
        recipient_id=phone,
        biz_opaque_callback_data=leaf(st.sampled_from(callbacks) | TEXT),
        errors=st.lists(error, max_size=2),
    )
    message = obj(
        **{"from": phone},
        id=wamid,
        timestamp=timestamp,
        type=leaf(st.sampled_from(["text", "button", "interactive", "image"])),
        text=obj(body=text),
        button=obj(text=text),
        interactive=obj(button_reply=obj(title=text), list_reply=obj(title=text)),
        context=obj(id=wamid),
    )
    value = obj(
        metadata=obj(phone_number_id=leaf(st.sampled_from(pnids) | TEXT)),
        statuses=st.lists(stat, max_size=3),
        messages=st.lists(message, max_size=2),
        contacts=st.lists(obj(wa_id=phone, profile=obj(name=text)), max_size=2),
        user_preferences=st.lists(
            obj(wa_id=phone, value=leaf(st.sampled_from(["stop", "resume"])), timestamp=timestamp), max_size=2
        ),
    )
    change = obj(field=st.sampled_from(["messages", "user_preferences"]), value=value)
    return st.fixed_dictionaries(
        {
            "object": st.just("whatsapp_business_account"),
            "entry": st.lists(obj(id=TEXT, changes=st.lists(change, min_size=1, max_size=2)), min_size=1, max_size=2),
        }
    )


def evolution_bodies(wamids: list[str], instances: list[str], wild: bool) -> st.SearchStrategy[Any]:
    obj = containers(wild)
    text = leaf(st.sampled_from(["PARAR", "oi"]) | TEXT)
    item = obj(
        keyId=leaf(st.sampled_from(wamids) | TEXT),
        status=leaf(st.sampled_from(["DELIVERY_ACK", "READ", "ERROR"])),
        key=obj(remoteJid=leaf(st.from_regex(r"\A55119\d{8}@s\.whatsapp\.net\Z") | TEXT), fromMe=leaf(st.just(False))),
        message=obj(
            conversation=text,
            extendedTextMessage=obj(text=text, contextInfo=obj(stanzaId=leaf(st.sampled_from(wamids) | TEXT))),
        ),
        pushName=text,
        messageTimestamp=leaf(st.integers(1_700_000_000, 1_900_000_000)),
    )
    return st.fixed_dictionaries(
        {
            "event": st.sampled_from(["messages.update", "MESSAGES_UPSERT", "messages.upsert"]),
            "instance": leaf(st.sampled_from(instances) | TEXT),
            "data": item | st.lists(item, max_size=3),
        }
    )


def hostile(wamids: list[str], callbacks: list[str], channels: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        *(meta_bodies(wamids, callbacks, channels, wild) for wild in (False, True)),
        *(evolution_bodies(wamids, channels, wild) for wild in (False, True)),
    )


def storable(text: Any, limit: int | None = None) -> bool:
    """A value Postgres' text column takes: a string without NUL that encodes as UTF-8."""
    if text is None:
        return True
    if not isinstance(text, str) or "\x00" in text or (limit is not None and len(text) > limit):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def assert_well_typed(parsed: ParsedEvent) -> None:
    assert storable(parsed.error)
    for u in parsed.statuses:
        assert storable(u.wamid, MAX_ID) and u.status in RANK and isinstance(u.at, datetime)
        assert u.recipient_id is None or 0 < u.recipient_id <= INT8_MAX
        assert u.code is None or 0 <= u.code <= INT4_MAX
        assert storable(u.message)
    for m in parsed.inbound:
        assert re.fullmatch(r"\+\d{1,15}", m.phone) and isinstance(m.at, datetime)
        assert storable(m.channel, MAX_ID) and storable(m.context_wamid, MAX_ID)
        assert storable(m.text) and storable(m.name)
    for p in parsed.preferences:
        assert re.fullmatch(r"\+\d{1,15}", p.phone) and p.value in ("stop", "resume") and storable(p.channel)


def parse_both(raw: bytes) -> None:
    for provider in ("meta_cloud", "evolution"):
        assert_well_typed(parse_body(1, provider, raw))


@given(ANY_JSON)
@settings(deadline=None)
def test_the_parser_never_raises_on_any_json(value):
    parse_both(json.dumps(value).encode())


@given(st.binary(max_size=200))
@settings(deadline=None)
def test_the_parser_never_raises_on_any_bytes(raw):
    parse_both(raw)


@given(hostile(["wamid.A"], ["pytake:1"], ["123"]))
@settings(max_examples=200, deadline=None)
def test_the_parser_never_raises_on_webhook_shapes_with_any_fields(value):
    parse_both(json.dumps(value).encode())


@given(st.integers(1, 3000))
@settings(deadline=None)
def test_the_parser_refuses_any_nesting_too_deep_and_reads_the_rest(depth):
    raw = b'{"entry":' + b"[" * depth + b"]" * depth + b"}"
    parsed = parse_body(1, "meta_cloud", raw)
    assert_well_typed(parsed)
    assert parsed.error in (None, "body nested too deep to be a webhook") or parsed.error.startswith("malformed")


@given(data=st.data())
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_ingestion_never_raises_and_never_blocks_a_good_event_queued_after_a_bad_one(db, fleet, data):
    owner, taken = fleet.recipient(), fleet.recipient(status="sending", wamid=False)  # a wamid to steal, a thief
    wamids, callbacks = [owner["wamid"]], [f"pytake:{owner['id']}", f"pytake:{taken['id']}"]
    bad = data.draw(hostile(wamids, callbacks, [fleet.pnid]) | ANY_JSON, "bad")
    provider = "evolution" if isinstance(bad, dict) and "event" in bad else "meta_cloud"
    good = fleet.recipient()
    (bad_id,) = queue(db, json.dumps(bad).encode(), provider=provider)
    (good_id,) = queue(db, meta_change(fleet.pnid, statuses=[status(good)]))

    ingest_pending(db)

    assert_good_applied(fleet, good, good_id)
    (settled,) = events(db, [bad_id])
    assert settled.state in ("processed", "unparseable", "quarantined", "pending")
