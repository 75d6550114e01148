"""A paced campaign's wave is a plain call, not a task run: it keeps the send-batch task's retries."""

from __future__ import annotations

import logging
import uuid

import flows.send_campaign as send_campaign
from flows.console import ButtonWatcher
from tasks.send import SEND_RETRIES


def _wave_of_a_missing_campaign(caplog, stopping: bool) -> tuple[Exception | None, list[str]]:
    """A campaign that is not there makes the batch raise; the wave's error and what it logged."""
    missing = uuid.uuid4()
    buttons = ButtonWatcher(missing, uuid.uuid4(), logging.getLogger("test"))
    if stopping:
        buttons.stop()
    with caplog.at_level(logging.WARNING, logger="paced"):
        counts, error = send_campaign._paced_wave(missing, False, buttons, logging.getLogger("paced"))
    assert counts == {}
    return error, [r.getMessage() for r in caplog.records if r.name == "paced"]


def test_a_failed_wave_is_tried_again_as_the_task_was_then_handed_back_with_its_error(db, caplog, monkeypatch):
    """Tried SEND_RETRIES more times (the task's retries), then its error comes back for the run's count of
    failed waves (three in a row stop the run)."""
    monkeypatch.setattr(send_campaign, "SEND_RETRY_DELAY_SECONDS", 0.01)
    error, lines = _wave_of_a_missing_campaign(caplog, stopping=False)
    assert error is not None and len(lines) == SEND_RETRIES + 1
    assert all(line.startswith("a wave failed, trying again in ") for line in lines[:-1])
    assert lines[-1] == f"a wave failed: {type(error).__name__}: {error}"


def test_a_wave_ended_by_serve_stopping_is_not_tried_again_nor_logged_as_a_failure(db, caplog):
    """`serve` stopping kills the send engine under the waves in flight: the run leaves, its campaign stays
    running for the next `serve`; an error with its traceback in the run's log would say otherwise."""
    error, lines = _wave_of_a_missing_campaign(caplog, stopping=True)
    assert error is not None and lines == []
