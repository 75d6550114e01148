"""One runner per campaign, held as a Postgres advisory lock on a connection of its process (LockSession).

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
import threading
import time
import uuid
from collections.abc import Iterator

import sqlalchemy as sa


def _lock_key(name: bytes) -> int:
    """A 64-bit advisory lock key for `name` (Postgres' bigint: signed)."""
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big", signed=True)


def _key(campaign_id: uuid.UUID) -> int:
    return _lock_key(b"pytake-campaign-runner:" + campaign_id.bytes)


class LockSession:
    """One Postgres connection that holds every runner lock its process takes. `campaigns serve` runs hundreds
    of campaigns in one process (deployments/dispatch.py): a connection each would pass Postgres'
    max_connections (100 by default) and drain the connection pool. Session-level advisory locks are
    re-entrant on their connection, so the session also refuses a campaign one of its own runs holds.

    Should the connection die (a Postgres restart, an idle timeout), every lock went with it: the next call
    connects again (waiting up to `retake_seconds` for Postgres) and takes each lock again; a lock another
    runner took meanwhile is that runner's now."""

    def __init__(self, db: sa.Engine, retake_seconds: float = 30.0) -> None:
        self._db, self.retake_seconds = db, retake_seconds
        self._conn: sa.Connection | None = None
        self._mutex = threading.Lock()
        self._keys: set[int] = set()
        self.generation = 0  # how many times the connection was made again after it died

    def try_take(self, key: int) -> bool:
        """Postgres errors propagate when there is no connection yet (Postgres away at the start)."""
        with self._mutex:
            if key in self._keys:
                return False  # another run in this process holds the campaign
            if self._conn is None:
                self._conn = self._db.connect()
            elif not self._alive():
                self._reconnect()
            if self._try(key):
                self._keys.add(key)
                return True
            return False

    def holds(self, key: int) -> bool:
        """Whether the lock is still this session's, asking Postgres (and taking it again if it must)."""
        with self._mutex:
            if key not in self._keys:
                return False
            if not self._alive():
                self._reconnect()
            return key in self._keys

    def give_back(self, key: int) -> None:
        """Release the lock; never waits for Postgres just to release it (a dead connection already did)."""
        with self._mutex:
            if key not in self._keys:
                return
            self._keys.discard(key)
            if self._conn is not None:
                try:
                    self._conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": key})
                    self._conn.commit()
                except sa.exc.DBAPIError:
                    self._close()
            if not self._keys:
                self._close()

    def _try(self, key: int) -> bool:
        assert self._conn is not None
        held = bool(self._conn.execute(sa.text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar_one())
        self._conn.commit()
        return held

    def _alive(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(sa.text("select 1"))
            self._conn.commit()
            return True
        except sa.exc.DBAPIError:
            return False

    def _reconnect(self) -> None:
        """A new connection, and each lock taken again on it; those another runner took are dropped, and all
        of them when Postgres stays away past `retake_seconds`."""
        deadline = time.monotonic() + self.retake_seconds
        while True:
            self._close()
            try:
                self._conn = self._db.connect()
                self._keys = {key for key in self._keys if self._try(key)}
                self.generation += 1
                return
            except sa.exc.DBAPIError:  # Postgres not back yet
                if time.monotonic() >= deadline:
                    self._close()
                    self._keys.clear()
                    return
                time.sleep(0.5)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._conn.close()
            self._conn = None


_sessions: dict[str, LockSession] = {}
_sessions_mutex = threading.Lock()


def lock_session(db: sa.Engine) -> LockSession:
    """This process's lock session for `db`'s database."""
    url = db.url.render_as_string(hide_password=False)
    with _sessions_mutex:
        if url not in _sessions:
            _sessions[url] = LockSession(db)
        return _sessions[url]


class RunnerLock:
    """Truthy while this run is the campaign's only runner. `still_held` asks Postgres: if the session's
    connection died, the lock is taken again on a new one once Postgres answers, and the runner carries on
    (`retaken` counts those times); when another runner took the campaign meanwhile, or Postgres stays away,
    this one must stop sending."""

    def __init__(self, session: LockSession, campaign_id: uuid.UUID) -> None:
        self._session, self._key = session, _key(campaign_id)
        self._held = False
        self._generation = session.generation
        self.retaken = 0

    def __bool__(self) -> bool:
        return self._held

    def take(self, wait_seconds: float) -> bool:
        """Try for `wait_seconds` (another runner may be finishing); Postgres errors propagate."""
        deadline = time.monotonic() + wait_seconds
        while not (held := self._session.try_take(self._key)) and time.monotonic() < deadline:
            time.sleep(0.5)
        self._held, self._generation = held, self._session.generation
        return held

    def still_held(self) -> bool:
        if not self._held:
            return False
        self._held = self._session.holds(self._key)
        if self._held and self._session.generation != self._generation:
            self.retaken += 1
        self._generation = self._session.generation
        return self._held

    def release(self) -> None:
        if self._held:
            self._session.give_back(self._key)
        self._held = False


@contextlib.contextmanager
def campaign_runner_lock(
    db: sa.Engine, campaign_id: uuid.UUID, wait_seconds: float = 30.0, session: LockSession | None = None
) -> Iterator[RunnerLock]:
    """Yields a truthy RunnerLock while this run is the campaign's only runner (`session`: this process's by
    default; a test passes its own to play a second process)."""
    lock = RunnerLock(session or lock_session(db), campaign_id)
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
