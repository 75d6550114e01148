"""The send engine is shared by every campaign run of a process: its warnings go to the run of the campaign
they are about, not to all 200 runs of a `campaigns serve`."""

from __future__ import annotations

import logging

from campaigns.sending import engine_process


def test_an_engine_warning_goes_to_its_campaigns_run_and_a_general_one_to_every_run(caplog):
    client = engine_process.EngineClient.__new__(engine_process.EngineClient)  # no engine process: routing only
    with (
        engine_process.engine_logs_to("run-a", "campaign-a"),
        engine_process.engine_logs_to("run-b", "campaign-b"),
        caplog.at_level(logging.WARNING, logger="campaigns.sending.deliver"),
    ):
        client._relog(logging.WARNING, "campaigns.sending.deliver", "number 1 answered 130429", "campaign-a")
        client._relog(logging.WARNING, "campaigns.sending.deliver", "rate limiter unavailable", None)
    written = [(r.getMessage(), getattr(r, "flow_run_id", None)) for r in caplog.records]
    assert written == [
        ("send engine: number 1 answered 130429", "run-a"),
        ("send engine: rate limiter unavailable", "run-a"),
        ("send engine: rate limiter unavailable", "run-b"),
    ]
