"""One runner per campaign, held as a Postgres advisory lock on a dedicated connection.

The lock dies with its connection, so a runner killed with SIGKILL frees the campaign at once for the
next one; no lease to expire, no stale flag to clean.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

LOCK_NAMESPACE = 727002


def _key(campaign_id: uuid.UUID) -> int:
    return int.from_bytes(campaign_id.bytes[:4], "big", signed=True)


@contextlib.contextmanager
def campaign_runner_lock(db: sa.Engine, campaign_id: uuid.UUID, wait_seconds: float = 30.0) -> Iterator[bool]:
    """Yields True while this process is the campaign's only runner; False if it could not become one."""
    params = {"ns": LOCK_NAMESPACE, "k": _key(campaign_id)}
    with db.connect() as conn:
        deadline = time.monotonic() + wait_seconds
        got = False
        while True:
            got = conn.execute(sa.text("select pg_try_advisory_lock(:ns, :k)"), params).scalar_one()
            conn.commit()
            if got or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(sa.text("select pg_advisory_unlock(:ns, :k)"), params)
                conn.commit()
