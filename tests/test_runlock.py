"""One runner per campaign, and campaigns never share a runner lock."""

from __future__ import annotations

import uuid

from campaigns.store.runlock import LockSession, campaign_runner_lock


def test_one_runner_per_campaign_and_ids_alike_in_their_first_bytes_do_not_collide(db):
    first = uuid.UUID("12345678-0000-4000-8000-000000000001")
    second = uuid.UUID("12345678-0000-4000-8000-000000000002")  # same first 4 bytes: the old 32-bit key
    with campaign_runner_lock(db, first) as held:
        assert held
        with campaign_runner_lock(db, first, wait_seconds=0) as again:
            assert not again  # a second run of the same campaign in this process is refused
        with campaign_runner_lock(db, first, wait_seconds=0, session=LockSession(db)) as elsewhere:
            assert not elsewhere  # and one in another process
        with campaign_runner_lock(db, second, wait_seconds=0) as other:
            assert other  # another campaign is not blocked by this one
    with campaign_runner_lock(db, first, wait_seconds=0) as after:
        assert after  # released on exit


def _terminate_holder(db, campaign: uuid.UUID) -> list[bool]:
    """What a Postgres restart or an idle-session timeout does to a runner's lock connection."""
    import sqlalchemy as sa

    from campaigns.store.runlock import _key

    key = _key(campaign) & 0xFFFFFFFFFFFFFFFF  # pg_locks shows a bigint key as two unsigned 32-bit halves
    with db.begin() as conn:
        return (
            conn.execute(
                sa.text("""
            select pg_terminate_backend(pid) from pg_locks
            where locktype = 'advisory' and granted and classid::bigint = :hi and objid::bigint = :lo
        """),
                {"hi": key >> 32, "lo": key & 0xFFFFFFFF},
            )
            .scalars()
            .all()
        )


def test_a_runner_whose_lock_connection_died_takes_the_lock_again_and_stays_the_only_runner(db):
    campaign = uuid.uuid4()
    with campaign_runner_lock(db, campaign) as held:
        assert _terminate_holder(db, campaign) == [True]
        assert held.still_held() and held.retaken == 1  # on a new connection: it carries on
        with campaign_runner_lock(db, campaign, wait_seconds=0, session=LockSession(db)) as second:
            assert not second
    with campaign_runner_lock(db, campaign, wait_seconds=0) as after:
        assert after  # released on exit


def test_a_runner_whose_lock_another_runner_took_meanwhile_stops(db):
    campaign = uuid.uuid4()
    with campaign_runner_lock(db, campaign) as held:
        assert _terminate_holder(db, campaign) == [True]
        with campaign_runner_lock(db, campaign, wait_seconds=0, session=LockSession(db)) as successor:
            assert successor  # the scheduler launched another runner while the first was cut off
            assert not held.still_held()  # the first learns it lost the campaign and stops
            assert successor.still_held()


def test_one_connection_holds_the_locks_of_a_hundred_campaigns_in_one_process(db):
    """`campaigns serve` runs every campaign in one process: a connection per campaign would exceed
    Postgres' max_connections (100 by default)."""
    import sqlalchemy as sa

    session = LockSession(db)
    campaigns = [uuid.uuid4() for _ in range(150)]
    locks = [campaign_runner_lock(db, c, wait_seconds=0, session=session) for c in campaigns]
    held = [lock.__enter__() for lock in locks]
    try:
        assert all(held)
        with db.connect() as conn:
            per_backend = "select count(*) n from pg_locks where locktype = 'advisory' group by pid"
            most = conn.execute(sa.text(f"select max(n) from ({per_backend}) l")).scalar_one()
        assert most >= 150  # one backend holds them all (other tests' runners may hold theirs meanwhile)
    finally:
        for lock in locks:
            lock.__exit__(None, None, None)
    with campaign_runner_lock(db, campaigns[0], wait_seconds=0, session=LockSession(db)) as after:
        assert after  # each was given back
