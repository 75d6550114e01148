"""Who sends: organizations, their WhatsApp numbers (rate, caps) and the business portfolios numbers share.

Scoped like the lifecycle: a number of another organization is "WhatsApp number not found", as a missing
one. A number's secrets are not here: its row names the Prefect block that holds them (blocks/numbers.py
saves the block, then the row).
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from campaigns.errors import Conflict, Invalid, NotFound
from campaigns.sending.ratelimit import PRESETS
from campaigns.store.schema import INT4_MAX, business_portfolios, organizations, whatsapp_numbers


def org_id_by_name(conn: sa.Connection, name_or_id: str) -> uuid.UUID:
    try:
        cond = organizations.c.id == uuid.UUID(name_or_id)
    except ValueError:
        cond = organizations.c.name == name_or_id
    found = conn.execute(sa.select(organizations.c.id).where(cond)).scalar()
    if found is None:
        raise NotFound(f"Organization not found: {name_or_id}")
    return found


def list_orgs(conn: sa.Connection) -> list[dict[str, Any]]:
    """Every organization, oldest first, with how many numbers and campaigns it has: the names the CLI's `--org`
    takes (the demo names its organization `demo <time>`)."""
    rows = conn.execute(
        sa.text("""
        select o.id, o.name,
               (select count(*) from whatsapp_numbers n where n.organization_id = o.id) as numbers,
               (select count(*) from campaigns c where c.organization_id = o.id) as campaigns
        from organizations o order by o.created_at, o.name
    """)
    )
    return [dict(r._mapping) for r in rows]


def add_org(conn: sa.Connection, name: str) -> uuid.UUID:
    stmt = (
        sa.dialects.postgresql.insert(organizations)
        .values(name=name)
        .on_conflict_do_update(index_elements=["name"], set_={"name": name})
        .returning(organizations.c.id)
    )
    return conn.execute(stmt).scalar_one()


def org_for_external_id(conn: sa.Connection, external_id: str, name: str | None = None) -> uuid.UUID:
    """The organization the main app calls `external_id`, created on first use (named `name`, or after the id):
    the main app's signature on a token is what says an organization exists, so a new tenant needs no step here.
    Two first requests at once create it once."""
    by_id = sa.select(organizations.c.id).where(organizations.c.external_id == external_id)
    wanted = name or f"ext-{external_id}"
    for candidate in (wanted, f"{wanted} ({external_id})"):  # a name already taken by another organization
        if found := conn.execute(by_id).scalar():
            return found
        insert = sa.dialects.postgresql.insert(organizations).values(name=candidate, external_id=external_id)
        conn.execute(insert.on_conflict_do_nothing())
    if found := conn.execute(by_id).scalar():
        return found
    raise Conflict(f"org: no organization could be made for {external_id!r}: its names are taken")


def add_number(
    conn: sa.Connection,
    org: uuid.UUID,
    *,
    provider: str,
    phone_number_id: str,
    block_name: str,
    mps: int = 80,
    webhook_signer: str | None = None,
    display_phone_number: str | None = None,
) -> uuid.UUID:
    """Create or update the number's row; registering it again makes it active again. `webhook_signer` names
    the secret its webhooks are signed with (None: the platform's Meta app)."""
    stmt = sa.dialects.postgresql.insert(whatsapp_numbers).values(
        organization_id=org,
        provider=provider,
        phone_number_id=phone_number_id,
        display_phone_number=display_phone_number,
        block_name=block_name,
        mps=mps,
        webhook_signer=webhook_signer,
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=["organization_id", "phone_number_id"],
        set_={
            "provider": provider,
            "block_name": block_name,
            "mps": mps,
            "active": True,
            "display_phone_number": display_phone_number,
            "webhook_signer": webhook_signer,
        },
    ).returning(whatsapp_numbers.c.id)
    return conn.execute(upsert).scalar_one()


def number_held_elsewhere(conn: sa.Connection, org: uuid.UUID, provider: str, phone_number_id: str) -> bool:
    """Another organization has registered this provider's number."""
    return (
        conn.execute(
            sa.select(whatsapp_numbers.c.id).where(
                whatsapp_numbers.c.provider == provider,
                whatsapp_numbers.c.phone_number_id == phone_number_id,
                whatsapp_numbers.c.organization_id != org,
            )
        ).first()
        is not None
    )


def list_numbers(conn: sa.Connection, org: uuid.UUID) -> list[dict[str, Any]]:
    """The organization's numbers, oldest first, each with its portfolio's limit (as `get_number`)."""
    ids = conn.execute(
        sa.select(whatsapp_numbers.c.id)
        .where(whatsapp_numbers.c.organization_id == org)
        .order_by(whatsapp_numbers.c.created_at, whatsapp_numbers.c.id)
    ).scalars()
    return [get_number(conn, org, number_id) for number_id in ids]


def get_number(conn: sa.Connection, org: uuid.UUID, number_id: uuid.UUID) -> dict[str, Any]:
    """The number's row, with its business portfolio's messaging limit as `portfolio_limit`."""
    row = (
        conn.execute(
            sa.select(whatsapp_numbers, business_portfolios.c.unique_recipients_24h.label("portfolio_limit"))
            .select_from(
                whatsapp_numbers.outerjoin(
                    business_portfolios, business_portfolios.c.id == whatsapp_numbers.c.portfolio_id
                )
            )
            .where(whatsapp_numbers.c.id == number_id, whatsapp_numbers.c.organization_id == org)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound("WhatsApp number not found")
    return dict(row)


LIMIT_FIELDS = ("mps", "per_minute", "per_hour", "per_day", "portfolio_id")


def number_limits(conn: sa.Connection, org: uuid.UUID, number_id: uuid.UUID) -> dict[str, Any]:
    """A number's rate, caps and business portfolio (with the portfolio's limit) as they are in force."""
    number = get_number(conn, org, number_id)
    return {**{name: number[name] for name in LIMIT_FIELDS}, "portfolio_limit": number["portfolio_limit"]}


def set_number_limits(
    conn: sa.Connection, org: uuid.UUID, number_id: uuid.UUID, changes: dict[str, Any], preset: str | None = None
) -> dict[str, Any]:
    """Change a number's rate (mps), caps (None = no cap) and business portfolio; a preset (ratelimit.PRESETS)
    applies first and explicit changes win. Returns what is in force."""
    if preset is not None and preset not in PRESETS:
        raise Invalid(f"preset: one of {', '.join(PRESETS)} (got {preset!r})")
    changes = {**(PRESETS[preset] if preset else {}), **changes}
    get_number(conn, org, number_id)
    for name, value in changes.items():
        if name not in LIMIT_FIELDS:
            raise Invalid(f"{name}: not a number limit (one of {', '.join(LIMIT_FIELDS)})")
        if name == "portfolio_id":
            if (
                value is not None
                and conn.execute(
                    sa.select(business_portfolios.c.id).where(
                        business_portfolios.c.id == value, business_portfolios.c.organization_id == org
                    )
                ).first()
                is None
            ):
                raise Invalid("portfolio_id: no such business portfolio in this organization")
            continue
        if name == "mps" and (value is None or not 1 <= value <= 100_000):
            raise Invalid("mps: messages per second must be between 1 and 100000")
        if value is not None and not 1 <= value <= INT4_MAX:
            raise Invalid(f"{name}: must be a number of messages from 1 to {INT4_MAX}, or none for no cap")
    if changes:
        conn.execute(sa.update(whatsapp_numbers).where(whatsapp_numbers.c.id == number_id).values(**changes))
    return number_limits(conn, org, number_id)


def add_portfolio(conn: sa.Connection, org: uuid.UUID, name: str, unique_recipients_24h: int | None) -> uuid.UUID:
    """A business portfolio and its messaging limit (None = unlimited); numbers join it by portfolio_id."""
    if unique_recipients_24h is not None and unique_recipients_24h < 1:
        raise Invalid("unique_recipients_24h: a positive number, or none for unlimited")
    stmt = sa.dialects.postgresql.insert(business_portfolios).values(
        organization_id=org, name=name, unique_recipients_24h=unique_recipients_24h
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["organization_id", "name"], set_={"unique_recipients_24h": unique_recipients_24h}
    )
    return conn.execute(stmt.returning(business_portfolios.c.id)).scalar_one()
