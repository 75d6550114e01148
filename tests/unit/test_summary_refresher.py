"""Ingestion hands the campaigns it touched to the summary refresher and goes on: a slow Prefect API delays the
artifacts in the UI, never the statuses reaching the statistics."""

from __future__ import annotations

import threading
import time
import uuid

from tasks.artifacts import SummaryRefresher


def test_touching_never_waits_for_a_slow_refresh_and_nothing_touched_is_left_behind():
    refreshed: list[uuid.UUID] = []
    in_refresh, release = threading.Event(), threading.Event()

    def slow_publish(cid: uuid.UUID) -> None:
        in_refresh.set()
        release.wait(5)  # Prefect's API answering slowly
        refreshed.append(cid)

    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    summaries = SummaryRefresher(0.05, publish=slow_publish)
    summaries.touch([first])
    assert in_refresh.wait(5)
    began = time.monotonic()
    summaries.touch([second, third])  # what the next pass of ingestion does while the refresh hangs
    assert time.monotonic() - began < 0.5
    release.set()
    summaries.close()
    assert sorted(map(str, refreshed)) == sorted(map(str, [first, second, third]))


def test_a_failing_refresh_is_logged_and_the_others_still_happen(caplog):
    bad, good = uuid.uuid4(), uuid.uuid4()
    done: list[uuid.UUID] = []

    def publish(cid: uuid.UUID) -> None:
        if cid == bad:
            raise ConnectionError("Prefect's API away")
        done.append(cid)

    summaries = SummaryRefresher(60, publish=publish)
    summaries.touch([bad, good])
    summaries.close()
    assert done == [good]
    assert f"summary artifact of campaign {bad} not refreshed" in caplog.text
