"""One runner per campaign, and campaigns never share a runner lock."""

from __future__ import annotations

import uuid

from campaigns.runlock import campaign_runner_lock


def test_one_runner_per_campaign_and_ids_alike_in_their_first_bytes_do_not_collide(db):
    first = uuid.UUID("12345678-0000-4000-8000-000000000001")
    second = uuid.UUID("12345678-0000-4000-8000-000000000002")  # same first 4 bytes: the old 32-bit key
    with campaign_runner_lock(db, first) as held:
        assert held
        with campaign_runner_lock(db, first, wait_seconds=0) as again:
            assert not again  # a second runner of the same campaign is refused
        with campaign_runner_lock(db, second, wait_seconds=0) as other:
            assert other  # another campaign is not blocked by this one
    with campaign_runner_lock(db, first, wait_seconds=0) as after:
        assert after  # released on exit


def test_a_runner_whose_lock_connection_died_knows_it_lost_the_campaign(db):
    import sqlalchemy as sa

    from campaigns.runlock import _key

    campaign = uuid.uuid4()
    key = _key(campaign) & 0xFFFFFFFFFFFFFFFF  # pg_locks shows a bigint key as two unsigned 32-bit halves
    with campaign_runner_lock(db, campaign) as held:
        assert held.still_held()
        with db.begin() as conn:  # what a Postgres restart or an idle-session timeout does to it
            killed = conn.execute(sa.text("""
                select pg_terminate_backend(pid) from pg_locks
                where locktype = 'advisory' and granted and classid::bigint = :hi and objid::bigint = :lo
            """), {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalars().all()
        assert killed == [True]
        assert not held.still_held()  # the runner stops: another may take the campaign now
        with campaign_runner_lock(db, campaign, wait_seconds=5) as successor:
            assert successor
