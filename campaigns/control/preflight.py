"""The seed's pre-send checklist. Every failed check is listed, not just the first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from campaigns.audience.build import contacts_query
from campaigns.sending.number_check import NumberHealth, check_number
from campaigns.sending.ratelimit import LimitUsage, caps_of_number, portfolio_limit
from campaigns.sending.rendering import placeholders
from campaigns.store.db import psycopg_of

KNOWN_FIELDS = {"contact.name", "contact.phone", "contact.first_name"}
WINDOWED_PROVIDERS = ("meta_cloud", "sandbox")  # Evolution (WhatsApp Web) has no 24 h window


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    warning: bool = False  # reported, does not block


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)
    audience_size: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok or c.warning for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok and not c.warning]

    def warnings(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok and c.warning]

    def add(self, name: str, ok: bool, detail: str = "", warning: bool = False) -> None:
        self.checks.append(Check(name, ok, detail, warning))


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _probe(fn: Callable[[], Any]) -> str | None:
    try:
        fn()
        return None
    except Exception as exc:  # reported as a failed check, whatever it was
        return _describe(exc)


def run_preflight(
    conn: sa.Connection,
    campaign: dict[str, Any],
    number: dict[str, Any],
    load_credentials: Callable[[], Any],
    ping_redis: Callable[[], Any],
    ping_prefect: Callable[[], Any] | None = None,
    allowed_statuses: tuple[str, ...] = ("draft", "scheduled"),
    usage: LimitUsage | None = None,
    check: Callable[[str, Any], NumberHealth] = check_number,
) -> Preflight:
    pf = Preflight()
    pf.add(
        "campaign status",
        campaign["status"] in allowed_statuses,
        f"campaign is {campaign['status']}; it must be draft or scheduled",
    )

    where, params = contacts_query(campaign["audience_type"], campaign["audience_filter"] or {})
    params["org"] = str(campaign["organization_id"])
    raw = psycopg_of(conn)
    with raw.cursor() as cur:
        # In the window and not skipped for another reason: the contacts free-form text would reach.
        params["respect"], params["skip_active"] = campaign["respect_opt_out"], campaign["skip_active_conversations"]
        cur.execute(
            "select count(*), count(*) filter (where opted_out_at is null), "
            "count(*) filter (where last_inbound_at > now() - interval '24 hours' "
            "and (opted_out_at is null or not %(respect)s) "
            "and (not in_conversation or not %(skip_active)s)) from contacts "
            f"where organization_id = %(org)s{where}",
            params,
        )
        size, not_opted_out, in_window = cur.fetchone() or (0, 0, 0)
    pf.audience_size = int(size)
    pf.add("audience", pf.audience_size > 0, "the audience has no contacts")
    if pf.audience_size and campaign["respect_opt_out"]:
        pf.add("audience", not_opted_out > 0, "every contact of the audience opted out")
    if pf.audience_size and campaign["message_type"] == "text" and number["provider"] in WINDOWED_PROVIDERS:
        # Meta delivers free-form text only inside the 24 h customer-service window.
        pf.add(
            "24 h window",
            in_window > 0,
            "free-form text reaches only contacts who wrote in the last 24 h, "
            "and none of the audience who may be sent to did: send an approved template "
            '(message_type "template")',
        )
        if in_window:
            pf.add(
                "24 h window",
                in_window == pf.audience_size,
                f"{in_window} of {pf.audience_size} contacts can get free-form text (they wrote in the last "
                "24 h); the others are skipped: a template reaches everyone",
                warning=True,
            )

    pf.add("whatsapp number active", bool(number["active"]), "the WhatsApp number is inactive")
    _check_credentials(pf, number, load_credentials, check)

    content = campaign["message_content"] or {}
    if campaign["message_type"] == "text":
        text = content.get("text") or ""
        pf.add("message content", bool(text.strip()), "message_content.text is empty")
        attrs = _attribute_names(conn, campaign["organization_id"])
        unknown = [p for p in placeholders(text) if p not in KNOWN_FIELDS and p.removeprefix("contact.") not in attrs]
        pf.add(
            "message variables",
            not unknown,
            "no contact has " + ", ".join(unknown) + " (each such recipient would fail)",
            warning=True,
        )
    else:
        pf.add("message content", bool(content.get("template_name")), "message_content.template_name is empty")

    if usage is not None:
        _check_limits(pf, number, usage)
    pf.add(
        "webhooks",
        not _statuses_silent(conn, number["id"], campaign["id"]),
        "the last campaign on this number sent messages more than 10 minutes ago and no status webhook came "
        "back: check that Meta's webhooks point at /webhooks/whatsapp (delivered and read stay uncounted)",
        warning=True,
    )

    problem = _probe(ping_redis)
    pf.add("redis", problem is None, f"Redis unreachable (rate limiting needs it): {problem}")
    if ping_prefect is not None:
        problem = _probe(ping_prefect)
        pf.add("prefect", problem is None, f"Prefect API unreachable: {problem}")
    return pf


def _check_credentials(
    pf: Preflight,
    number: dict[str, Any],
    load_credentials: Callable[[], Any],
    check: Callable[[str, Any], NumberHealth],
) -> None:
    """A token that is present is not yet a valid one: ask the provider (see campaigns.sending.number_check)."""
    try:
        creds = load_credentials()
        if not getattr(creds, "token", ""):
            raise ValueError("no access token")
        health = check(number["provider"], creds)
    except Exception as exc:  # a missing or unreadable block: reported as a failed check
        pf.add("whatsapp credentials", False, f"credentials block {number['block_name']!r}: {_describe(exc)}")
        return
    if health.reachable:
        pf.add("whatsapp credentials", health.accepted, health.detail)
    else:
        pf.add("whatsapp credentials", False, f"not checked, {health.detail}; sending will tell", warning=True)
    rating = health.quality_rating
    pf.add(
        "number quality",
        rating in (None, "GREEN", "UNKNOWN"),
        f"Meta rates this number's quality {rating}: more blocks and reports may lower its limits",
        warning=True,
    )


def _check_limits(pf: Preflight, number: dict[str, Any], usage: LimitUsage) -> None:
    """How much of the audience the number's caps and its portfolio let through before a pause. Said, not
    refused: the campaign pauses with `rate_limit` at the limit and resumes by itself when the window moves."""
    caps = [cap for cap in caps_of_number(number) if cap.pause]
    for cap, (used, ends) in zip(caps, usage.caps(caps), strict=True):
        room = max(cap.limit - used, 0)
        if room == 0:
            detail = (
                f"Rate limit exceeded: the {cap.label} is used up; the campaign will pause until "
                f"{datetime.fromtimestamp(ends, UTC):%Y-%m-%dT%H:%M:%SZ} and then resume by itself"
            )
        else:
            detail = (
                f"{room} of {pf.audience_size} recipients fit before the {cap.label} is reached "
                f"({used} used); the campaign pauses there and resumes when the window ends"
            )
        pf.add("number caps", pf.audience_size <= room, detail, warning=True)
    portfolio = portfolio_limit(number.get("portfolio_id"), number.get("portfolio_limit"))
    if portfolio:
        used = usage.portfolio(portfolio)
        room = max(portfolio.limit - used, 0)
        pf.add(
            "business portfolio limit",
            pf.audience_size <= room,
            f"{min(room, pf.audience_size)} of {pf.audience_size} recipients fit in the next 24 h "
            f"({used} of {portfolio.limit} unique recipients used); the campaign pauses at the limit and "
            "resumes as the 24 h window moves",
            warning=True,
        )


def _statuses_silent(conn: sa.Connection, number_id: Any, campaign_id: Any) -> bool:
    """The webhooks are not reaching us: the number's last campaign has not one message delivered or read,
    and its oldest sent one went out over 10 minutes ago. (A number that never sent cannot tell yet.)
    Each step is one probe of the (campaign_id, status, id) index, cheap after a campaign of millions."""
    return bool(
        conn.execute(
            sa.text("""
        with last as (
            select id from campaigns where whatsapp_number_id = :n and id <> :c and started_at is not null
            order by started_at desc limit 1
        )
        select case
            when exists (select 1 from campaign_recipients r, last where r.campaign_id = last.id
                         and r.status in ('delivered', 'read')) then false
            else coalesce((select r.sent_at < now() - interval '10 minutes' from campaign_recipients r, last
                           where r.campaign_id = last.id and r.status = 'sent' order by r.id limit 1), false)
        end
    """),
            {"n": number_id, "c": campaign_id},
        ).scalar()
    )


def _attribute_names(conn: sa.Connection, org: Any) -> set[str]:
    rows = conn.execute(
        sa.text(
            "select distinct jsonb_object_keys(attributes) from (select attributes from contacts "
            "where organization_id = :o limit 1000) s"
        ),
        {"o": org},
    )
    return {r[0] for r in rows}
