"""`/health`: each dependency the API needs, checked now, and a 503 naming the ones that are down.

Postgres holds everything; Redis holds the rate limits a start checks; Prefect runs what `start` hands it.
A load balancer or an on-call person reads one answer: {"status": "ok" | "down", "checks": {name: "ok" |
what failed}}. Each check has a short timeout so a dependency that hangs cannot hang the probe.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import redis
import sqlalchemy as sa

TIMEOUT_SECONDS = 2.0
CREDENTIALS = re.compile(r"://([^:/@\s]+):[^@/\s]+@")

Check = Callable[[], None]  # raises when its dependency is down


def postgres(db: sa.Engine) -> Check:
    def check() -> None:
        with db.connect() as conn:
            conn.execute(sa.text(f"set local statement_timeout = {int(TIMEOUT_SECONDS * 1000)}"))
            conn.execute(sa.text("select 1"))

    return check


def redis_at(url: str) -> Check:
    def check() -> None:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)
        try:
            client.ping()
        finally:
            client.close()

    return check


def prefect_at(api_url: str) -> Check:
    def check() -> None:
        httpx.get(f"{api_url.rstrip('/')}/health", timeout=TIMEOUT_SECONDS).raise_for_status()

    return check


def report(checks: dict[str, Check]) -> tuple[int, dict[str, Any]]:
    """(status code, body): 200 when every dependency answers, else 503 with what each one said."""
    said = {}
    for name, check in checks.items():
        try:
            check()
            said[name] = "ok"
        except Exception as exc:  # any failure is the answer, never a 500 of the probe itself
            said[name] = f"down: {_cause(exc)}"
    down = [name for name, value in said.items() if value != "ok"]
    return (503 if down else 200), {"status": "down" if down else "ok", "down": down, "checks": said}


def _cause(exc: Exception) -> str:
    """The failure's first line, a URL's password blanked (a DSN in a connection error must not leak)."""
    first = CREDENTIALS.sub(r"://\1:***@", (str(exc).splitlines() or [""])[0][:200])
    return f"{type(exc).__name__}: {first}".rstrip(": ")
