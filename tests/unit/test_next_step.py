"""The send run's decision after each wave (campaigns/sending/runner.next_step): pure, no services."""

from __future__ import annotations

import pytest

from campaigns.sending.runner import MAX_FAILED_WAVES, MAX_IDLE_SLEEP, Remaining, Step, failed_waves_after, next_step

BATCH, CAP, GRACE = 100, 4, 120.0


def left(
    status: str = "running",
    due: int = 0,
    waiting: int = 0,
    unknown: int = 0,
    next_in: float | None = None,
    probe_in: float | None = None,
) -> Remaining:
    return Remaining(status, due, waiting, unknown, next_in, probe_in)


@pytest.mark.parametrize(
    ("remaining", "step"),
    [
        (left(due=1), Step("send", batches=1)),  # one row fills one batch
        (left(due=100), Step("send", batches=1)),
        (left(due=101), Step("send", batches=2)),
        (left(due=10_000), Step("send", batches=CAP)),  # a wave never exceeds the cap
        (left(due=5, waiting=3, unknown=2, next_in=1.0), Step("send", batches=1)),  # due rows first
        (left(waiting=3, next_in=2.5), Step("wait", seconds=2.5)),  # the nearest retry
        (left(waiting=3, next_in=600.0), Step("wait", seconds=MAX_IDLE_SLEEP)),  # never blind for long
        (left(unknown=2), Step("wait", seconds=MAX_IDLE_SLEEP)),  # unknown outcomes: look again soon
        (left(waiting=1, unknown=1, next_in=0.5), Step("wait", seconds=0.5)),
        (left(due=500, probe_in=12.0), Step("wait_for_provider", seconds=MAX_IDLE_SLEEP)),  # provider down
        (left(due=500, probe_in=1.5), Step("wait_for_provider", seconds=1.5)),
        (left(due=500, probe_in=0.0), Step("send", batches=1, probe=True)),  # one message tries it
        (left(due=500, probe_in=-3.0), Step("send", batches=1, probe=True)),  # overdue: at once
        (left(waiting=2, next_in=1.0, probe_in=9.0), Step("wait", seconds=1.0)),  # nothing due: no probe
        (left(), Step("finish")),  # nothing left
        (left(status="paused", due=500), Step("finish")),  # paused, cancelled...: this run stops
        (left(status="cancelled", unknown=3), Step("finish")),
    ],
)
def test_the_run_sends_what_is_due_waits_for_the_nearest_retry_or_finishes(remaining, step):
    assert next_step(remaining, CAP, BATCH, GRACE) == step


def test_a_short_grace_is_waited_for_exactly():
    assert next_step(left(unknown=1), CAP, BATCH, grace_seconds=2.0) == Step("wait", seconds=2.0)


@pytest.mark.parametrize(
    ("before", "failed", "batches", "after"),
    [
        (0, 4, 4, 1),  # every batch failed: one more failed wave
        (2, 1, 1, 3),
        (2, 3, 4, 0),  # one good batch starts the count again
        (1, 0, 4, 0),
        (0, 0, 0, 0),  # no batch at all is not a failure
    ],
)
def test_failed_waves_count_only_waves_where_every_batch_failed(before, failed, batches, after):
    assert failed_waves_after(before, failed, batches) == after


def test_the_run_stops_after_three_waves_in_a_row_that_all_failed():
    waves = 0
    for _ in range(MAX_FAILED_WAVES):
        waves = failed_waves_after(waves, 4, 4)
    assert waves == MAX_FAILED_WAVES == 3
