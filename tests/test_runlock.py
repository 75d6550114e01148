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
