"""Webhook events → recipient statuses, replies, the 24 h window and opt-outs; set-based, idempotent.

Events are claimed in bulk with SKIP LOCKED inside one transaction (several ingesters may run; a crash
rolls the claim back). Statuses only move forward (pending/sending < sent < delivered < read, and `failed`
is terminal: a status webhook for a row that reconciliation had put back to pending proves it was
accepted, so it is not sent again; campaigns.store.recipients holds that order and writes it), each
status keeps its first timestamp, so duplicates and shuffled order give the same result. A status is
matched by our recipient id (biz_opaque_callback_data) or by wamid; one that matches nothing yet stays
pending and is retried, and after `ORPHAN_AFTER_ATTEMPTS` it is marked orphaned, never silently dropped.

One event never stops the others: a body that cannot be read is refused at parse time (`unparseable`,
see `campaigns.webhooks.parse.parse_body`), and a round is applied in a savepoint; if the database refuses it
for a reason in the data (a NUL the parser missed, a wamid already on another row…), the round is split
in halves, down to the one event that fails, which is `quarantined` with its error and never picked again.
A transient failure (connection lost, deadlock, lock timeout) rolls the whole round back instead: it says
nothing about the events. A round is bounded by count and by bytes of stored bodies.

Tenancy: an event only touches the numbers whose webhook signer vouched for it (the secret that signed it,
see `campaigns.webhooks.receiver.signer_id`). A status about another signer's message is rejected and noted.

Why it stays one module (about 450 lines): the round's machinery (claim, savepoint, halving, settling) and what an
event does to the rows share the `Claimed` events' counters, which the appliers set and `_settle` reads; split
apart, each half would reach into the other's state.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from campaigns.control.lifecycle import pause_for_error
from campaigns.sending.error_codes import OPTED_OUT, FailureClass, classify, pause_reason
from campaigns.sending.providers.base import clean_text
from campaigns.settings import get_settings
from campaigns.store import recipients
from campaigns.webhooks.contact_events import OptChange, Seen, apply_opt_changes, keyword_set, normalise_keyword, touch
from campaigns.webhooks.parse import Inbound, ParsedEvent, StatusUpdate, parse_body
from campaigns.webhooks.receiver import PLATFORM

log = logging.getLogger(__name__)

ORPHAN_AFTER_ATTEMPTS = 30  # with backoff capped at 5 min: about two hours
REPLY_WAIT = timedelta(minutes=10)  # a reply quoting an unknown wamid waits this long for its send to be recorded
ROUND_MAX_BYTES = 16 * 1024 * 1024  # stored bodies per round: parsed JSON takes ~10× its size in memory
# SQLSTATE classes that say nothing about the data: connection, rollback (deadlock, serialization),
# resources, operator intervention (statement timeout, shutdown), system; and 55P03, lock not available.
TRANSIENT_SQLSTATE = ("08", "40", "53", "57", "58", "55P03")


def vouched(signers: frozenset[str], number_signer: str | None) -> bool:
    """Did one of the event's signers sign for this number? (None on the number = the platform's app.)"""
    return (number_signer in signers) if number_signer else PLATFORM in signers


@dataclass
class Claimed:
    parsed: ParsedEvent
    signers: frozenset[str]
    received_at: datetime
    unmatched: int = 0
    rejected: int = 0
    waiting_reply: bool = False
    quarantined: str | None = None  # why applying this event failed

    def reset(self) -> None:
        """Forget what an earlier attempt counted (each attempt starts clean: a rolled-back one counted
        nothing that happened)."""
        self.unmatched, self.rejected, self.waiting_reply = 0, 0, False


@dataclass(frozen=True)
class Known:
    """A recipient row as ingestion needs it."""

    id: int
    wamid: str | None
    organization_id: uuid.UUID
    phone: str
    signer: str | None


def _lookup(
    conn: sa.Connection, column: str, values: set[Any], by_id: dict[int, Known], by_wamid: dict[str, Known]
) -> None:
    """Add the recipients whose `column` (id or wamid) is in `values` to both maps.

    One plain index lookup per key column: `id = any(..) or wamid = any(..)` can be planned as a scan of
    the whole table (680-850 ms for a round of 5,000 events without fresh statistics, against 40 ms).
    """
    if not values:
        return
    for row in conn.execute(
        sa.text(f"""
        select r.id, r.wamid, r.organization_id, r.phone, n.webhook_signer as signer
        from campaign_recipients r
        join campaigns c on c.id = r.campaign_id
        join whatsapp_numbers n on n.id = c.whatsapp_number_id
        where r.{column} = any(:v)
    """),
        {"v": list(values)},
    ):
        known = Known(*row)
        by_id[known.id] = known
        if known.wamid:
            by_wamid[known.wamid] = known


def apply_statuses(conn: sa.Connection, matched: list[StatusUpdate]) -> set[Any]:
    """Apply updates whose recipient is known, set-based; returns the campaigns touched."""
    if not matched:
        return set()
    campaign_of = recipients.apply_webhooks(conn, matched)
    _pause_for_campaign_codes(conn, matched, campaign_of)
    return set(campaign_of.values())


def _pause_for_campaign_codes(conn: sa.Connection, matched: list[StatusUpdate], campaign_of: dict[int, Any]) -> None:
    """A campaign-level code in a `failed` webhook (payment, a paused template, the spam limit…) pauses a
    running campaign, as the same code answered at send time does: sending on would only fail the rest of
    the audience. The message itself stays failed with its code (`retry-failed --code` after the fix)."""
    paused: set[Any] = set()
    for u in matched:
        if u.status != "failed" or u.code is None or classify(u.code) is not FailureClass.CAMPAIGN:
            continue
        cid = campaign_of.get(u.recipient_id or 0)
        if cid is not None and cid not in paused:
            if pause_for_error(conn, cid, pause_reason(u.code), f"({u.code}) {u.message or ''}".strip()):
                log.warning("campaign %s paused by a failed status webhook: (%s) %s", cid, u.code, u.message)
            paused.add(cid)


def apply_replies(conn: sa.Connection, replies: list[tuple[int, datetime]]) -> set[Any]:
    if not replies:
        return set()
    rows = conn.execute(
        sa.text("""
        update campaign_recipients r set replied_at = least(coalesce(r.replied_at, v.at), v.at)
        from unnest(cast(:ids as bigint[]), cast(:a as timestamptz[])) as v(id, at)
        where r.id = v.id returning r.campaign_id
    """),
        {"ids": [i for i, _ in replies], "a": [a for _, a in replies]},
    )
    return {row.campaign_id for row in rows}


def _channels(conn: sa.Connection, events: list[Claimed]) -> dict[str, list[tuple[uuid.UUID, str | None]]]:
    """phone_number_id / instance → [(organization, signer)] for the numbers inbound events name."""
    wanted = {
        channel
        for e in events
        for channel in [*(i.channel for i in e.parsed.inbound), *(p.channel for p in e.parsed.preferences)]
        if channel
    }
    if not wanted:
        return {}
    out: dict[str, list[tuple[uuid.UUID, str | None]]] = {}
    for pnid, org, signer in conn.execute(
        sa.text(
            "select phone_number_id, organization_id, webhook_signer from whatsapp_numbers"
            " where phone_number_id = any(:p)"
        ),
        {"p": list(wanted)},
    ):
        out.setdefault(pnid, []).append((org, signer))
    return out


@dataclass
class IngestResult:
    events: int = 0
    statuses: int = 0
    unmatched: int = 0
    rejected: int = 0
    inbound: int = 0
    opt_changes: int = 0
    quarantined: int = 0
    campaigns: set[Any] = field(default_factory=set)
    full: bool = False  # the round stopped at its count or byte bound: more may be pending

    def add(self, other: IngestResult) -> None:
        for name in ("events", "statuses", "unmatched", "rejected", "inbound", "opt_changes", "quarantined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.campaigns |= other.campaigns


def _parse(row: Any) -> ParsedEvent:
    return parse_body(row.id, row.provider, bytes(row.body), row.received_at)


def _match_statuses(
    events: list[Claimed], by_id: dict[int, Known], by_wamid: dict[str, Known]
) -> tuple[list[StatusUpdate], list[OptChange]]:
    matched, opt_outs = [], []
    for e in events:
        for u in e.parsed.statuses:
            row = by_id.get(u.recipient_id) if u.recipient_id is not None else None
            row = row or by_wamid.get(u.wamid or "")
            if row is None:
                e.unmatched += 1
            elif not vouched(e.signers, row.signer):
                e.rejected += 1
            else:
                u.recipient_id = row.id
                matched.append(u)
                if u.status == "failed" and u.code == OPTED_OUT:
                    opt_outs.append(OptChange(row.organization_id, row.phone, u.at, True, str(OPTED_OUT)))
    return matched, opt_outs


def _contact_events(
    events: list[Claimed],
    channels: dict[str, list[tuple[uuid.UUID, str | None]]],
    by_wamid: dict[str, Known],
    now: datetime,
) -> tuple[list[Seen], list[OptChange], list[Any]]:
    settings = get_settings()
    stop, start = keyword_set(settings.opt_out_keywords), keyword_set(settings.opt_in_keywords)
    seen: list[Seen] = []
    changes: list[OptChange] = []
    replies: list[tuple[int, datetime]] = []

    def orgs(e: Claimed, item: Inbound | Any) -> list[uuid.UUID]:
        return [org for org, signer in channels.get(item.channel or "", []) if vouched(e.signers, signer)]

    for e in events:
        for msg in e.parsed.inbound:
            word = normalise_keyword(msg.text)
            for org in orgs(e, msg):
                seen.append(Seen(org, msg.phone, msg.at, msg.name))
                if word in stop or word in start:
                    changes.append(OptChange(org, msg.phone, msg.at, word in stop, "keyword"))
            if msg.context_wamid:
                row = by_wamid.get(msg.context_wamid)
                if row is not None and vouched(e.signers, row.signer):
                    replies.append((row.id, msg.at))
                elif row is None and now - e.received_at < REPLY_WAIT:
                    e.waiting_reply = True  # its campaign send may not be recorded yet
        for pref in e.parsed.preferences:
            for org in orgs(e, pref):
                changes.append(OptChange(org, pref.phone, pref.at, pref.value == "stop", "user_preferences"))
    return seen, changes, replies


def _claim(conn: sa.Connection, limit: int, max_bytes: int) -> tuple[list[Any], bool]:
    """Lock up to `limit` pending events, keep the first ones whose bodies fit in `max_bytes` (at least one),
    and fetch those. Returns them and whether the round was cut short (more may be pending).

    The rows locked but not kept stay pending; other ingesters skip them until this round commits."""
    sizes = conn.execute(
        sa.text("""
        select id, octet_length(body) from webhook_events
        where state = 'pending' and (retry_at is null or retry_at <= now())
        order by id limit :n for update skip locked
    """),
        {"n": limit},
    ).all()
    kept: list[int] = []
    total = 0
    for event_id, size in sizes:
        total += size
        if kept and total > max_bytes:
            break
        kept.append(event_id)
    if not kept:
        return [], False
    rows = conn.execute(
        sa.text("select id, provider, body, signers, received_at from webhook_events where id = any(:ids) order by id"),
        {"ids": kept},
    ).all()
    return list(rows), len(sizes) == limit or len(kept) < len(sizes)


def ingest_once(conn: sa.Connection, limit: int = 5000, max_bytes: int = ROUND_MAX_BYTES) -> IngestResult:
    """Claim up to `limit` pending events (and `max_bytes` of bodies) and apply them, in the caller's
    transaction; an event the database refuses is quarantined alone (see the module's docstring)."""
    rows, full = _claim(conn, limit, max_bytes)
    if not rows:
        return IngestResult()
    events = [Claimed(_parse(r), frozenset(r.signers or ()), r.received_at) for r in rows]
    result = _apply_isolating(conn, events, datetime.now(UTC))
    result.events, result.full = len(rows), full
    result.quarantined = sum(e.quarantined is not None for e in events)
    _settle(conn, events)
    return result


def _transient(exc: Exception) -> bool:
    """Does the error say nothing about the events (so that none of them may be quarantined for it)?"""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is None:  # raised by the driver itself: a lost connection, or a value it cannot send
        return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
    return sqlstate.startswith(TRANSIENT_SQLSTATE)


def _describe(exc: Exception) -> str:
    """The error as an operator reads it on the event: the database's own message, not our SQL."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    return clean_text(f"{type(cause).__name__}: {cause}", 1000)


def _apply_isolating(conn: sa.Connection, events: list[Claimed], now: datetime) -> IngestResult:
    """Apply `events` together in a savepoint (one per round in the normal case); if that fails for a reason
    in the data, apply each half apart, down to the single event that fails, which is quarantined.
    One bad event in a round of 5,000 costs about 2·log2(5,000) ≈ 26 more savepoints, not 5,000."""
    try:
        with conn.begin_nested():
            return _apply(conn, events, now)
    except Exception as exc:
        if _transient(exc):
            raise
        if len(events) == 1:
            events[0].quarantined = _describe(exc)
            log.warning("webhook event %s quarantined: %s", events[0].parsed.event_id, events[0].quarantined)
            return IngestResult()
    half = len(events) // 2
    result = _apply_isolating(conn, events[:half], now)
    result.add(_apply_isolating(conn, events[half:], now))
    return result


def _apply(conn: sa.Connection, events: list[Claimed], now: datetime) -> IngestResult:
    """Statuses, replies, the 24 h window and opt-outs of `events`, set-based."""
    for e in events:  # what an earlier attempt on them counted was rolled back with it
        e.reset()
    result = IngestResult()
    updates = [u for e in events for u in e.parsed.statuses]
    by_id: dict[int, Known] = {}
    by_wamid: dict[str, Known] = {}
    _lookup(conn, "id", {u.recipient_id for u in updates if u.recipient_id is not None}, by_id, by_wamid)
    # Wamids only where our recipient id did not find the row (Evolution, foreign callback data) and for replies.
    _lookup(
        conn,
        "wamid",
        {
            w
            for w in [
                *(u.wamid for u in updates if u.recipient_id not in by_id),
                *(i.context_wamid for e in events for i in e.parsed.inbound),
            ]
            if w and w not in by_wamid
        },
        by_id,
        by_wamid,
    )
    matched, opt_outs = _match_statuses(events, by_id, by_wamid)
    seen, changes, replies = _contact_events(events, _channels(conn, events), by_wamid, now)
    result.campaigns |= apply_statuses(conn, matched)
    result.campaigns |= apply_replies(conn, replies)
    touch(conn, seen)
    apply_opt_changes(conn, [*opt_outs, *changes])
    result.statuses = len(updates)
    result.unmatched = sum(e.unmatched for e in events)
    result.rejected = sum(e.rejected for e in events)
    result.inbound = len(seen)
    result.opt_changes = len(opt_outs) + len(changes)
    return result


def _settle(conn: sa.Connection, events: list[Claimed]) -> None:
    """Mark each claimed event processed, unparseable, quarantined, or pending again (with backoff) for what
    is unmatched. Unparseable and quarantined events keep their error for an operator and are never picked
    again (`update webhook_events set state = 'pending' where id = …` puts one back after a fix)."""
    done, notes, retry = [], [], []
    for e in events:
        if e.parsed.error:
            notes.append({"id": e.parsed.event_id, "state": "unparseable", "e": e.parsed.error})
        elif e.quarantined:
            notes.append({"id": e.parsed.event_id, "state": "quarantined", "e": e.quarantined})
        elif e.unmatched or e.waiting_reply:
            retry.append(e.parsed.event_id)
        elif e.rejected:
            log.warning(
                "event %s: %d statuses for numbers its signer does not vouch for", e.parsed.event_id, e.rejected
            )
            notes.append(
                {
                    "id": e.parsed.event_id,
                    "state": "processed",
                    "e": f"{e.rejected} statuses rejected: their numbers are not signed by this secret",
                }
            )
        else:
            done.append(e.parsed.event_id)
    if done:
        conn.execute(
            sa.text(
                "update webhook_events set state = 'processed', processed_at = now(), "
                "attempts = attempts + 1 where id = any(:ids)"
            ),
            {"ids": done},
        )
    if notes:
        conn.execute(
            sa.text(
                "update webhook_events set state = :state, processed_at = now(), error = :e, "
                "attempts = attempts + 1 where id = :id"
            ),
            notes,
        )
    if retry:
        conn.execute(
            sa.text("""
            update webhook_events set attempts = attempts + 1,
                state = case when attempts + 1 >= :max then 'orphaned' else 'pending' end,
                retry_at = now() + least(interval '5 seconds' * power(2, attempts), interval '5 minutes'),
                error = 'status or reply for a message not known yet'
            where id = any(:ids)
        """),
            {"ids": retry, "max": ORPHAN_AFTER_ATTEMPTS},
        )


def ingest_pending(
    engine: sa.Engine, limit: int = 5000, max_rounds: int = 1000, max_bytes: int = ROUND_MAX_BYTES
) -> IngestResult:
    """Drain what is pending now (each round its own transaction)."""
    total = IngestResult()
    for _ in range(max_rounds):
        with engine.begin() as conn:
            r = ingest_once(conn, limit, max_bytes)
        total.add(r)
        if not r.full:
            break
    return total


def ingest_for(
    engine: sa.Engine,
    run_for_seconds: float,
    every_seconds: float = 1.0,
    on_pass: Callable[[IngestResult], None] | None = None,
) -> IngestResult:
    """Keep draining every `every_seconds` for `run_for_seconds` (0 = drain once); `on_pass` sees each pass.

    A scheduled run that stays for its whole interval makes a status reach the statistics within about
    `every_seconds` of its receipt, instead of waiting for the next scheduled run to start.
    """
    deadline = time.monotonic() + run_for_seconds
    total = IngestResult()
    while True:
        applied = ingest_pending(engine)
        total.add(applied)
        if on_pass:
            on_pass(applied)
        if time.monotonic() + every_seconds > deadline:
            return total
        time.sleep(every_seconds)
