"""One runner per campaign, held as a Postgres advisory lock on a dedicated connection.

The lock dies with its connection, so a runner killed with SIGKILL frees the campaign at once for the
next one; no lease to expire, no stale flag to clean. Should that connection drop while the runner lives
(a Postgres restart), the runner takes the lock again on a new connection and carries on; if a second
runner was quicker, the first stops. Either way the row claims still send each recipient once.

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


def _lock_key(name: bytes) -> int:
    """A 64-bit advisory lock key for `name` (Postgres' bigint: signed)."""
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big", signed=True)


def _key(campaign_id: uuid.UUID) -> int:
    return _lock_key(b"pytake-campaign-runner:" + campaign_id.bytes)


class RunnerLock:
    """Truthy while this process is the campaign's only runner. `still_held` asks its connection; if that
    connection died (a Postgres restart, an idle timeout), the lock went with it: it is taken again on a new
    connection once Postgres answers (within `retake_seconds`), so the runner carries on; when another runner
    took the campaign meanwhile, or Postgres stays away, this one must stop sending."""

    def __init__(self, db: sa.Engine, campaign_id: uuid.UUID, retake_seconds: float = 30.0) -> None:
        self._db, self._params, self.retake_seconds = db, {"k": _key(campaign_id)}, retake_seconds
        self._conn: sa.Connection | None = None
        self._held = False
        self.retaken = 0  # how many times the lock was taken again after its connection died

    def __bool__(self) -> bool:
        return self._held

    def take(self, wait_seconds: float) -> bool:
        """Try for `wait_seconds` (another runner may be finishing); Postgres errors propagate."""
        self._conn = self._db.connect()
        deadline = time.monotonic() + wait_seconds
        while not self._try() and time.monotonic() < deadline:
            time.sleep(0.5)
        return self._held

    def _try(self) -> bool:
        assert self._conn is not None
        self._held = bool(self._conn.execute(sa.text("select pg_try_advisory_lock(:k)"), self._params).scalar_one())
        self._conn.commit()
        return self._held

    def still_held(self) -> bool:
        if not self._held or self._conn is None:
            return False
        try:
            self._conn.execute(sa.text("select 1"))
            self._conn.commit()
            return True
        except sa.exc.DBAPIError:
            self._held = False
        return self._retake()

    def _retake(self) -> bool:
        deadline = time.monotonic() + self.retake_seconds
        while True:
            self.close()
            try:
                self._conn = self._db.connect()
                if self._try():
                    self.retaken += 1
                    return True
                return False  # another runner holds the campaign now
            except sa.exc.DBAPIError:  # Postgres not back yet
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.5)

    def release(self) -> None:
        """Give the lock back (a dead connection already did): never waits to retake it just to release it."""
        if self._held and self._conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                self._conn.execute(sa.text("select pg_advisory_unlock(:k)"), self._params)
                self._conn.commit()
        self._held = False
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._conn.close()
            self._conn = None


@contextlib.contextmanager
def campaign_runner_lock(db: sa.Engine, campaign_id: uuid.UUID, wait_seconds: float = 30.0) -> Iterator[RunnerLock]:
    """Yields a truthy RunnerLock while this process is the campaign's only runner."""
    lock = RunnerLock(db, campaign_id)
    try:
        lock.take(wait_seconds)
        yield lock
    finally:
        lock.release()


def runner_alive(conn: sa.Connection, campaign_id: uuid.UUID) -> bool:
    """Whether some process holds the campaign's runner lock now (it is taken and at once given back)."""
    params = {"k": _key(campaign_id)}
    if conn.execute(sa.text("select pg_try_advisory_lock(:k)"), params).scalar_one():
        conn.execute(sa.text("select pg_advisory_unlock(:k)"), params)
        return False
    return True


def sole_serve_lock(db: sa.Engine, prefect_api: str) -> sa.Connection | None:
    """The connection holding the lock of the one `campaigns serve` for this Prefect API, or None when another
    live `serve` holds it. Held until the process exits (the lock dies with the connection, so a killed
    `serve` frees it at once). Only the sole `serve` may take runs left Running for orphans: a second one
    beside it would otherwise mark the first one's live runs Crashed."""
    conn = db.connect()
    key = _lock_key(b"pytake-campaigns-serve:" + prefect_api.encode())
    if conn.execute(sa.text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar():
        conn.commit()  # the session lock outlives the transaction
        return conn
    conn.close()
    return None
