"""Who did what through the API, one row an action: the acting user, their role, what and on which campaign
or number. Written in the action's own transaction where there is one, so a row is never without its action."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from campaigns.store.schema import audit_log


def record(
    conn: sa.Connection,
    organization_id: uuid.UUID,
    actor: str,
    role: str,
    action: str,
    *,
    campaign_id: uuid.UUID | None = None,
    number_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        sa.insert(audit_log).values(
            organization_id=organization_id,
            campaign_id=campaign_id,
            number_id=number_id,
            actor=actor,
            role=role,
            action=action,
            details=details or {},
        )
    )


def of_campaign(conn: sa.Connection, organization_id: uuid.UUID, campaign_id: uuid.UUID) -> list[dict[str, Any]]:
    """The campaign's actions, oldest first (an organization's campaign; the caller checked it exists)."""
    rows = conn.execute(
        sa.select(audit_log.c.at, audit_log.c.actor, audit_log.c.role, audit_log.c.action, audit_log.c.details)
        .where(audit_log.c.organization_id == organization_id, audit_log.c.campaign_id == campaign_id)
        .order_by(audit_log.c.id)
    ).mappings()
    return [dict(r) for r in rows]
