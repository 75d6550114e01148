"""One runner per campaign, held as a Postgres advisory lock on a dedicated connection.

The lock dies with its connection, so a runner killed with SIGKILL frees the campaign at once for the
next one; no lease to expire, no stale flag to clean. Should that connection drop while the runner lives
(a Postgres restart), a second runner may start: the row claims still send each recipient once.

The key is 64 bits of a hash of the campaign id: with 32 bits, two campaigns of a large installation
would share a lock sooner or later, and the second would wait and then not send at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterator

import sqlalchemy as sa


def _key(campaign_id: uuid.UUID) -> int:
    digest = hashlib.blake2b(b"pytake-campaign-runner:" + campaign_id.bytes, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class RunnerLock:
    """Truthy while this process is the campaign's only runner. `still_held` asks its connection: if that
    connection died (a Postgres restart, an idle timeout), the lock went with it and another runner may
    take the campaign, so this one must stop sending."""

    def __init__(self, conn: sa.Connection, held: bool) -> None:
        self._conn, self._held = conn, held

    def __bool__(self) -> bool:
        return self._held

    def still_held(self) -> bool:
        if not self._held:
            return False
        try:
            self._conn.execute(sa.text("select 1"))
            self._conn.commit()
            return True
        except sa.exc.DBAPIError:
            self._held = False
            return False


@contextlib.contextmanager
def campaign_runner_lock(db: sa.Engine, campaign_id: uuid.UUID, wait_seconds: float = 30.0) -> Iterator[RunnerLock]:
    """Yields a truthy RunnerLock while this process is the campaign's only runner."""
    params = {"k": _key(campaign_id)}
    with db.connect() as conn:
        deadline = time.monotonic() + wait_seconds
        got = False
        while True:
            got = conn.execute(sa.text("select pg_try_advisory_lock(:k)"), params).scalar_one()
            conn.commit()
            if got or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        lock = RunnerLock(conn, bool(got))
        try:
            yield lock
        finally:
            if lock.still_held():
                conn.execute(sa.text("select pg_advisory_unlock(:k)"), params)
                conn.commit()


def runner_alive(conn: sa.Connection, campaign_id: uuid.UUID) -> bool:
    """Whether some process holds the campaign's runner lock now (it is taken and at once given back)."""
    params = {"k": _key(campaign_id)}
    if conn.execute(sa.text("select pg_try_advisory_lock(:k)"), params).scalar_one():
        conn.execute(sa.text("select pg_advisory_unlock(:k)"), params)
        return False
    return True
