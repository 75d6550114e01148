"""What every command module of `campaigns` uses: stderr for words, JSON as the API writes it, the database,
and a campaign's organization when `--org` is not given."""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from campaigns.control import lifecycle, tenancy
from campaigns.errors import NotFound


def err(msg: str) -> None:
    print(msg, file=sys.stderr)


def as_json(value: Any, indent: int | None = None) -> str:
    """JSON as the HTTP API writes it: times in the seed's form (UTC, Z), ids as strings."""
    from datetime import datetime

    from campaigns.store.db import iso_z

    return json.dumps(value, indent=indent, default=lambda v: iso_z(v) if isinstance(v, datetime) else str(v))


def db() -> Any:
    from campaigns.store.db import get_engine

    return get_engine()


def org_of(conn: Any, campaign_id: str, org: str | None) -> uuid.UUID:
    if org:
        return tenancy.org_id_by_name(conn, org)
    try:
        return lifecycle.get_any_org(conn, uuid.UUID(campaign_id))["organization_id"]
    except ValueError:
        raise NotFound("Campaign not found") from None
