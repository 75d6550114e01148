"""Webhook events → recipient statuses, set-based, idempotent, in any order.

Events are claimed in bulk with SKIP LOCKED inside one transaction (several ingesters may run; a crash
rolls the claim back). Every entry × change × status is read. Statuses only move forward
(pending/sending < sent < delivered < read, and `failed` is terminal: a status webhook for a row that
reconciliation had put back to pending proves it was accepted, so it is not sent again), each status keeps
its first timestamp,
so duplicates and shuffled order give the same result. A status is matched by our recipient id
(biz_opaque_callback_data) or by wamid; one that matches nothing yet stays pending and is retried,
and after `ORPHAN_AFTER_ATTEMPTS` it is marked orphaned, never silently dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from campaigns.providers.base import parse_callback_data

log = logging.getLogger(__name__)

ORPHAN_AFTER_ATTEMPTS = 30  # with backoff capped at 5 min: about two hours
RANK = {"sent": 2, "delivered": 3, "read": 4, "played": 4, "failed": 5}
EVOLUTION_STATUS = {"SERVER_ACK": "sent", "DELIVERY_ACK": "delivered", "READ": "read", "PLAYED": "read",
                    "ERROR": "failed", "SENT": "sent", "DELIVERED": "delivered", "FAILED": "failed"}


@dataclass
class StatusUpdate:
    event_id: int
    wamid: str | None
    recipient_id: int | None
    status: str
    at: datetime
    code: int | None = None
    message: str | None = None


@dataclass
class ParsedEvent:
    event_id: int
    statuses: list[StatusUpdate] = field(default_factory=list)
    replies: list[tuple[str, datetime]] = field(default_factory=list)  # (context wamid, at)
    error: str | None = None


def _ts(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


INT4_MAX = 2**31 - 1


def _error(status: dict[str, Any]) -> tuple[int | None, str | None]:
    errors = status.get("errors") or []
    if not errors or not isinstance(errors[0], dict):
        return None, None
    err = errors[0]
    details = (err.get("error_data") or {}).get("details") if isinstance(err.get("error_data"), dict) else None
    text = " - ".join(str(x) for x in (err.get("title") or err.get("message"), details) if x)
    code = err.get("code")
    number = int(code) if str(code).isdigit() else None
    if number is not None and number > INT4_MAX:  # not a Graph code; keep it in the text only
        text, number = f"{text} (code {number})", None
    return number, text or None


def parse_meta(event_id: int, payload: Any) -> ParsedEvent:
    out = ParsedEvent(event_id)
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        out.error = "not a WhatsApp Business Account notification (no entry list)"
        return out
    for entry in payload["entry"]:
        for change in (entry or {}).get("changes") or []:
            value = (change or {}).get("value") or {}
            for st in value.get("statuses") or []:
                status = str(st.get("status", "")).lower()
                if status not in RANK:
                    continue
                code, message = _error(st) if status == "failed" else (None, None)
                out.statuses.append(StatusUpdate(
                    event_id, st.get("id"), parse_callback_data(st.get("biz_opaque_callback_data")), status,
                    _ts(st.get("timestamp")), code, message,
                ))
            for msg in value.get("messages") or []:
                context = msg.get("context") or {}
                if context.get("id"):
                    out.replies.append((context["id"], _ts(msg.get("timestamp"))))
    return out


def parse_evolution(event_id: int, payload: Any) -> ParsedEvent:
    out = ParsedEvent(event_id)
    if not isinstance(payload, dict):
        out.error = "not an Evolution event"
        return out
    data = payload.get("data")
    items = data if isinstance(data, list) else [data]
    if str(payload.get("event", "")).lower() in ("messages.update", "messages_update"):
        for item in items:
            if not isinstance(item, dict):
                continue
            status = EVOLUTION_STATUS.get(str(item.get("status", "")).upper())
            if status:
                out.statuses.append(StatusUpdate(event_id, item.get("keyId"), None, status, datetime.now(UTC)))
    return out


def _resolve(conn: sa.Connection, updates: list[StatusUpdate]) -> None:
    """Fill recipient_id from the wamid where the callback data did not carry it."""
    missing = list({u.wamid for u in updates if u.recipient_id is None and u.wamid})
    if not missing:
        return
    rows = conn.execute(sa.text("select wamid, id from campaign_recipients where wamid = any(:w)"), {"w": missing})
    known = dict(rows.all())
    for u in updates:
        if u.recipient_id is None and u.wamid in known:
            u.recipient_id = known[u.wamid]


APPLY = sa.text("""
    with s as (
        select v.rid,
               max(v.wamid) as wamid,
               min(v.at) filter (where v.status = 'sent') as sent_at,
               min(v.at) filter (where v.status = 'delivered') as delivered_at,
               min(v.at) filter (where v.status in ('read', 'played')) as read_at,
               min(v.at) filter (where v.status = 'failed') as failed_at,
               max(v.code) filter (where v.status = 'failed') as code,
               max(v.message) filter (where v.status = 'failed') as message,
               max(case v.status when 'sent' then 2 when 'delivered' then 3 when 'read' then 4 when 'played' then 4
                   when 'failed' then 5 end) as rank
        from unnest(cast(:rids as bigint[]), cast(:wamids as text[]), cast(:statuses as text[]),
                    cast(:ats as timestamptz[]), cast(:codes as int[]), cast(:messages as text[]))
             as v(rid, wamid, status, at, code, message)
        group by v.rid
    )
    update campaign_recipients r set
        wamid = coalesce(r.wamid, s.wamid),
        status = (array['sending', 'sent', 'delivered', 'read', 'failed'])[greatest(s.rank, case r.status
            when 'sent' then 2 when 'delivered' then 3 when 'read' then 4 when 'failed' then 5 else 1 end)],
        sent_at = coalesce(least(r.sent_at, s.sent_at), s.delivered_at, s.read_at),
        delivered_at = least(r.delivered_at, s.delivered_at),
        read_at = least(r.read_at, s.read_at),
        failed_at = least(r.failed_at, s.failed_at),
        error_code = case when s.failed_at is not null and r.status <> 'failed' then s.code else r.error_code end,
        error_message = case when s.failed_at is not null and r.status <> 'failed' then s.message
                        else r.error_message end
    from s
    where r.id = s.rid and r.status in ('pending', 'sending', 'sent', 'delivered', 'read', 'failed')
    returning r.id, r.campaign_id
""")


def apply_statuses(conn: sa.Connection, updates: list[StatusUpdate]) -> set[Any]:
    """Apply matched updates set-based; returns the campaigns touched."""
    matched = [u for u in updates if u.recipient_id is not None]
    if not matched:
        return set()
    params = {
        "rids": [u.recipient_id for u in matched], "wamids": [u.wamid for u in matched],
        "statuses": [u.status for u in matched], "ats": [u.at for u in matched],
        "codes": [u.code for u in matched], "messages": [u.message for u in matched],
    }
    return {row.campaign_id for row in conn.execute(APPLY, params)}


def apply_replies(conn: sa.Connection, replies: list[tuple[str, datetime]]) -> set[Any]:
    if not replies:
        return set()
    rows = conn.execute(sa.text("""
        update campaign_recipients r set replied_at = least(coalesce(r.replied_at, v.at), v.at)
        from unnest(cast(:w as text[]), cast(:a as timestamptz[])) as v(wamid, at)
        where r.wamid = v.wamid returning r.campaign_id
    """), {"w": [w for w, _ in replies], "a": [a for _, a in replies]})
    return {row.campaign_id for row in rows}


@dataclass
class IngestResult:
    events: int = 0
    statuses: int = 0
    unmatched: int = 0
    campaigns: set[Any] = field(default_factory=set)


def ingest_once(conn: sa.Connection, limit: int = 5000) -> IngestResult:
    """Claim up to `limit` pending events and apply them, all in the caller's transaction."""
    rows = conn.execute(sa.text("""
        select id, provider, body from webhook_events
        where state = 'pending' and (retry_at is null or retry_at <= now())
        order by id limit :n for update skip locked
    """), {"n": limit}).all()
    result = IngestResult(events=len(rows))
    if not rows:
        return result
    parsed: list[ParsedEvent] = []
    for row in rows:
        try:
            payload = json.loads(bytes(row.body))
        except ValueError:
            parsed.append(ParsedEvent(row.id, error="body is not valid JSON"))
            continue
        parse = parse_evolution if row.provider == "evolution" else parse_meta
        try:
            parsed.append(parse(row.id, payload))
        except Exception as exc:  # a signed but malformed event must never stop ingestion for the rest
            parsed.append(ParsedEvent(row.id, error=f"malformed event: {type(exc).__name__}: {exc}"[:500]))
    updates = [u for p in parsed for u in p.statuses]
    _resolve(conn, updates)
    result.statuses = len(updates)
    result.campaigns |= apply_statuses(conn, updates)
    result.campaigns |= apply_replies(conn, [r for p in parsed for r in p.replies])
    unmatched_events = {u.event_id for u in updates if u.recipient_id is None}
    result.unmatched = sum(1 for u in updates if u.recipient_id is None)
    done = [p.event_id for p in parsed if p.event_id not in unmatched_events and not p.error]
    bad = [(p.event_id, p.error) for p in parsed if p.error]
    if done:
        conn.execute(sa.text("update webhook_events set state = 'processed', processed_at = now(), "
                             "attempts = attempts + 1 where id = any(:ids)"), {"ids": done})
    for event_id, error in bad:
        conn.execute(sa.text("update webhook_events set state = 'unparseable', processed_at = now(), error = :e, "
                             "attempts = attempts + 1 where id = :id"), {"e": error, "id": event_id})
    if unmatched_events:
        conn.execute(sa.text("""
            update webhook_events set attempts = attempts + 1,
                state = case when attempts + 1 >= :max then 'orphaned' else 'pending' end,
                retry_at = now() + least(interval '5 seconds' * power(2, attempts), interval '5 minutes'),
                error = 'status for a message not known yet'
            where id = any(:ids)
        """), {"ids": list(unmatched_events), "max": ORPHAN_AFTER_ATTEMPTS})
    return result


def ingest_pending(engine: sa.Engine, limit: int = 5000, max_rounds: int = 1000) -> IngestResult:
    """Drain what is pending now (each round its own transaction)."""
    total = IngestResult()
    for _ in range(max_rounds):
        with engine.begin() as conn:
            r = ingest_once(conn, limit)
        total.events += r.events
        total.statuses += r.statuses
        total.unmatched += r.unmatched
        total.campaigns |= r.campaigns
        if r.events < limit:
            break
    return total
