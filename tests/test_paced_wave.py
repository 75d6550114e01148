"""A paced campaign's wave is a plain call, not a task run: it keeps the send-batch task's retries."""

from __future__ import annotations

import logging
import uuid

import pytest

import flows.send_campaign as send_campaign
from flows.console import ButtonWatcher
from tasks.send import SEND_RETRIES


@pytest.mark.parametrize("stopping", [False, True])
def test_a_failed_wave_is_tried_again_as_the_task_was_then_handed_back_with_its_error(
    db, stopping, caplog, monkeypatch
):
    """A campaign that is not there makes the batch raise: the wave is tried SEND_RETRIES more times (as the
    task's retries did), then its error comes back for the run's count of failed waves; a dispatcher that is
    stopping does not wait to try again."""
    missing = uuid.uuid4()
    buttons = ButtonWatcher(missing, uuid.uuid4(), logging.getLogger("test"))
    if stopping:
        buttons.stop()
    monkeypatch.setattr(send_campaign, "SEND_RETRY_DELAY_SECONDS", 0.01)
    with caplog.at_level(logging.WARNING, logger="paced"):
        counts, error = send_campaign._paced_wave(missing, False, buttons, logging.getLogger("paced"))
    assert counts == {} and error is not None
    tries = [r.getMessage() for r in caplog.records if r.name == "paced"]
    assert len(tries) == (1 if stopping else SEND_RETRIES + 1)
    assert all("trying again" in t for t in tries[:-1]) and tries[-1].startswith("a wave failed: ")
    assert str(error) in tries[-1]
