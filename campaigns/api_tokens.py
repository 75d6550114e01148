"""Bearer tokens for the HTTP API: each carries one organization and one role.

Only the sha256 of a token is stored, so a database leak yields no usable token. A token is random (256
bits), so a hash lookup needs no constant-time comparison: timing can reveal nothing that helps guess one.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from campaigns.errors import Invalid
from campaigns.store.schema import API_ROLES, api_tokens

PREFIX = "pytk_"  # recognisable in a leaked config or a secret scanner, and never a valid hash


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: every query it makes is scoped to this organization. `actor` is who acted, as
    the audit log records it: the main app's user (a JWT's `sub`), or `token:<id>` for an opaque token."""

    organization_id: uuid.UUID
    role: str
    actor: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(
    conn: sa.Connection, organization_id: uuid.UUID, role: str, expires_at: datetime | None = None
) -> tuple[uuid.UUID, str]:
    """A new token for the organization (until `expires_at`, or until revoked): returns its id and the token,
    which is never seen again."""
    if role not in API_ROLES:
        raise Invalid(f"role: one of {', '.join(API_ROLES)} (got {role!r})")
    token = PREFIX + secrets.token_urlsafe(32)
    token_id = conn.execute(
        sa.insert(api_tokens)
        .values(organization_id=organization_id, role=role, token_hash=token_hash(token), expires_at=expires_at)
        .returning(api_tokens.c.id)
    ).scalar_one()
    return token_id, token


def revoke(conn: sa.Connection, token_id: uuid.UUID) -> bool:
    """Refuse the token from now on (the row stays, for the record); False if there was none to revoke."""
    return bool(
        conn.execute(
            sa.update(api_tokens)
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now())
        ).rowcount
    )


def caller(conn: sa.Connection, token: str) -> Caller | None:
    """The caller a live token stands for; None for an unknown, revoked or expired token."""
    row = conn.execute(
        sa.select(api_tokens.c.organization_id, api_tokens.c.role, api_tokens.c.id).where(
            api_tokens.c.token_hash == token_hash(token),
            api_tokens.c.revoked_at.is_(None),
            sa.or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > sa.func.now()),
        )
    ).first()
    return Caller(row.organization_id, row.role, f"token:{row.id}") if row else None
