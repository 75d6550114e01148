"""What every command module of `campaigns` uses: stderr for words, JSON as the API writes it, the database,
and a campaign's organization when `--org` is not given."""

from __future__ import annotations

import json
import sys
import time
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


class ProgressLine:
    """A progress line on stderr. On a terminal it is redrawn in place; in a log file (stderr not a terminal)
    a `\\r` redraw would pile every update onto one endless line, so there it is written as a line of its
    own when it changes, at most every `every` seconds, and the last one at the end."""

    def __init__(self, prefix: str = "", every: float = 5.0) -> None:
        self.prefix, self.every = prefix, every
        self.tty = sys.stderr.isatty()
        self._written: str | None = None  # the last line written
        self._latest: str | None = None  # the last line shown
        self._at = float("-inf")

    def show(self, line: str) -> None:
        self._latest = line
        if self.tty:
            self._write("\r" + self.prefix + line)
        elif line != self._written and time.monotonic() - self._at >= self.every:
            self._write(self.prefix + line + "\n")
            self._written, self._at = line, time.monotonic()

    def end(self) -> None:
        if self.tty:
            self._write("\n")
        elif self._latest is not None and self._latest != self._written:
            self._write(self.prefix + self._latest + "\n")

    @staticmethod
    def _write(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()
