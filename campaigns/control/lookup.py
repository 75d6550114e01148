"""The names an operator types in the forms, to the rows they name: an organization by its name, a WhatsApp
number by its phone_number_id, display number (any punctuation) or id, a campaign by its id or name. Apart from
the forms and the actions because it is the only part of them with SQL of its own (the forms describe, the actions
go through lifecycle and services); a refusal names the field and lists what the name could have meant."""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any

import sqlalchemy as sa

from campaigns.control import lifecycle
from campaigns.control.tenancy import org_id_by_name
from campaigns.errors import Invalid, NotFound
from campaigns.store.db import iso_z
from campaigns.store.schema import campaigns, whatsapp_numbers


def find_org(conn: sa.Connection, organization: str) -> uuid.UUID:
    try:
        return org_id_by_name(conn, (organization or "").strip())
    except NotFound:
        raise Invalid(f"organization: no organization named {organization!r}") from None


def org_of_campaign(conn: sa.Connection, campaign: str) -> uuid.UUID:
    """The organization of a campaign given by id, for a form left without one; a name needs its organization
    (two organizations may each have a campaign of that name)."""
    try:
        return lifecycle.get_any_org(conn, uuid.UUID((campaign or "").strip()))["organization_id"]
    except ValueError:
        raise Invalid("organization: needed when the campaign is given by name (or give the campaign's id)") from None


def find_number(conn: sa.Connection, org: uuid.UUID, ref: str) -> uuid.UUID:
    """The organization's number by its phone_number_id, display number (any punctuation) or id."""
    ref = (ref or "").strip()
    n = whatsapp_numbers.c
    conditions = [n.phone_number_id == ref]
    with contextlib.suppress(ValueError):
        conditions.append(n.id == uuid.UUID(ref))
    if digits := re.sub(r"\D", "", ref):
        conditions.append(sa.func.regexp_replace(n.display_phone_number, r"\D", "", "g") == digits)
    found = conn.execute(sa.select(n.id).where(n.organization_id == org, sa.or_(*conditions))).scalars().all()
    if len(found) == 1:
        return found[0]
    if found:
        raise Invalid(
            f"whatsapp_number: {ref!r} matches {len(found)} numbers; give the id of one: " + ", ".join(map(str, found))
        )
    known = conn.execute(
        sa.select(n.phone_number_id, n.display_phone_number)
        .where(n.organization_id == org)
        .order_by(n.created_at)
        .limit(10)
    ).all()
    listed = ", ".join(f"{p} ({d})" if d else p for p, d in known) or "none yet"
    raise Invalid(f"whatsapp_number: no WhatsApp number {ref!r} in this organization (its numbers: {listed})")


def find_campaign(conn: sa.Connection, org: uuid.UUID, ref: str) -> dict[str, Any]:
    """The organization's campaign by id or by name; a name several campaigns share is refused, listing them."""
    ref = (ref or "").strip()
    try:
        return lifecycle.get(conn, org, uuid.UUID(ref))
    except ValueError:
        pass
    rows = (
        conn.execute(
            sa.select(campaigns)
            .where(campaigns.c.organization_id == org, campaigns.c.name == ref)
            .order_by(campaigns.c.created_at.desc())
        )
        .mappings()
        .all()
    )
    if not rows:
        raise NotFound(f"Campaign not found: no campaign named {ref!r} in this organization")
    if len(rows) > 1:
        raise Invalid(
            f"campaign: {len(rows)} campaigns are named {ref!r}; give the id of the one you mean",
            [f"{r['id']} ({r['status']}, created {iso_z(r['created_at'])})" for r in rows],
        )
    return dict(rows[0])
