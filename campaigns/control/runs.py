"""What the control needs from Prefect, named here and passed in by the faces and flows.

The domain never imports Prefect: a start's checklist reads the number's credentials through a
`LoadCredentials`, and the send-campaign runs are launched, scheduled, dropped and read through a `Runs`.
deployments/launch.py's `PrefectRuns` and blocks/whatsapp.py's `fresh_credentials` are the real ones;
a test passes its own (tests/test_preflight.py starts campaigns without a Prefect block).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from campaigns.sending.providers import Credentials

LoadCredentials = Callable[[str], Credentials]  # a number's block name -> its credentials, read now


@dataclass(frozen=True)
class RunState:
    type: str  # CANCELLED, FAILED, CRASHED, RUNNING, SCHEDULED, PENDING…
    message: str = ""
    since: datetime | None = None  # when the run entered this state


class Runs(Protocol):
    """A campaign's send-campaign runs, where an operator sees them (the Prefect UI)."""

    def launch(self, campaign_id: uuid.UUID) -> str:
        """A run that sends the campaign now (its suspended run woken, if it has one); the run's id."""
        ...

    def schedule(self, campaign_id: uuid.UUID, at: datetime) -> str:
        """A run waiting for `at` (shown under Upcoming); the run's id."""
        ...

    def drop_scheduled(self, flow_run_id: str | None, why: str) -> bool:
        """Cancel the run if it still waits for its time; True when it did."""
        ...

    def wake_suspended(self, campaign_id: uuid.UUID) -> str | None:
        """Resume the campaign's run suspended by a pause, if any; its id."""
        ...

    def state(self, flow_run_id: str | None) -> RunState | None:
        """The run's state, or None when there is no such run."""
        ...

    def close(self, flow_run_id: str | None, why: str) -> bool:
        """Mark Crashed a run whose process is gone but that still reads Running or Pending; True when it did."""
        ...
