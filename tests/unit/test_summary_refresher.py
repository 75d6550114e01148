"""Ingestion hands the campaigns it touched to the summary refresher and goes on: a slow Prefect API delays the
artifacts in the UI, never the statuses reaching the statistics."""

from __future__ import annotations

import threading
import time
import uuid

from tasks.artifacts import SummaryRefresher


def test_touching_never_waits_for_a_slow_refresh_and_nothing_touched_is_left_behind():
    refreshed: list[set[uuid.UUID]] = []
    in_refresh, release = threading.Event(), threading.Event()

    def slow_refresh(ids: set[uuid.UUID]) -> None:
        in_refresh.set()
        release.wait(5)  # Prefect's API answering slowly
        refreshed.append(ids)

    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    summaries = SummaryRefresher(0.05, refresh=slow_refresh)
    summaries.touch([first])
    assert in_refresh.wait(5)
    began = time.monotonic()
    summaries.touch([second, third])  # what the next pass of ingestion does while the refresh hangs
    assert time.monotonic() - began < 0.5
    release.set()
    summaries.close()
    assert refreshed[0] == {first} and set().union(*refreshed) == {first, second, third}


def test_a_failed_refresh_is_logged_and_tried_again_with_the_next(caplog):
    calls: list[set[uuid.UUID]] = []

    def refresh(ids: set[uuid.UUID]) -> None:
        calls.append(ids)
        if len(calls) == 1:
            raise ConnectionError("Prefect's API away")

    summaries = SummaryRefresher(3600, refresh=refresh)  # flushed by hand below
    a, b = uuid.uuid4(), uuid.uuid4()
    summaries.touch([a])
    summaries.flush(summaries.most)
    summaries.touch([b])
    summaries.close()
    assert calls == [{a}, {a, b}]  # the failed one again, with the next
    assert "summary artifacts of 1 campaigns not refreshed" in caplog.text


def test_a_flush_refreshes_at_most_its_share_longest_waiting_first_and_closing_refreshes_the_rest():
    """With 200 campaigns touched, a flush every 5 s refreshing all of them would keep Prefect's server busy."""
    batches: list[set[uuid.UUID]] = []
    summaries = SummaryRefresher(3600, refresh=batches.append, most=2)  # flushed by hand below
    ids = [uuid.uuid4() for _ in range(5)]
    summaries.touch(ids[:3])
    summaries.touch([ids[0], *ids[3:]])  # touched again: keeps its place
    summaries.flush(summaries.most)
    summaries.flush(summaries.most)
    summaries.close()
    assert batches == [{ids[0], ids[1]}, {ids[2], ids[3]}, {ids[4]}]
