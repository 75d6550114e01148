"""The runner's send lease as written down for the campaign's next runner (campaigns/sending/send_lease.py):
one entry per campaign, read once, and never an error of the runner's when Redis is away. A dict stands in
for Redis; the flow test of a killed runner (tests/test_runner_faults.py) runs it against the real one."""

from __future__ import annotations

import uuid

import redis

from campaigns.sending.send_lease import TTL_SECONDS, RunnerLease


class FakeRedis:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.ttls: dict[str, int] = {}

    def set(self, key: str, value: str, ex: int) -> None:
        self.values[key], self.ttls[key] = value, ex

    def expire(self, key: str, seconds: int) -> None:
        if key in self.values:
            self.ttls[key] = seconds

    def delete(self, key: str) -> None:
        self.values.pop(key, None)

    def getdel(self, key: str) -> bytes | None:
        value = self.values.pop(key, None)
        return value.encode() if value is not None else None


class AwayRedis:
    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            raise redis.ConnectionError("Connection refused")

        return fail


def test_the_lease_a_runner_held_is_handed_to_the_next_one_once():
    fake, campaign, lease_id = FakeRedis(), uuid.uuid4(), uuid.uuid4()
    RunnerLease(fake, campaign).remember(lease_id)

    assert list(fake.ttls.values()) == [TTL_SECONDS]
    assert RunnerLease(fake, campaign).take_left_behind() == lease_id
    assert RunnerLease(fake, campaign).take_left_behind() is None


def test_a_lease_given_back_normally_or_another_campaigns_is_not_handed_on():
    fake, campaign = FakeRedis(), uuid.uuid4()
    lease = RunnerLease(fake, campaign)
    lease.remember(uuid.uuid4())
    lease.forget()
    RunnerLease(fake, uuid.uuid4()).remember(uuid.uuid4())

    assert RunnerLease(fake, campaign).take_left_behind() is None


def test_redis_away_costs_the_runner_nothing():
    lease = RunnerLease(AwayRedis(), uuid.uuid4())
    lease.remember(uuid.uuid4())
    lease.refresh()
    lease.forget()

    assert lease.take_left_behind() is None
