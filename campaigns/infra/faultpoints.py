"""Pause points for the fault suite (tests/faults), so a test can SIGKILL a process at an exact moment.

With CAMPAIGNS_FAULT_PAUSE set to a folder, a process that reaches a point listed in `<folder>/armed` writes
its pid to `<folder>/<point>` and stops there until it is killed. Only the first process to get to a point
pauses there: the runner started again after the kill (same environment) goes on. The test arms the next
point when it wants it. Unset, which is always the case outside the fault suite, a point costs one
environment lookup and does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "CAMPAIGNS_FAULT_PAUSE"

# The moments the fault suite kills at, in the order a campaign reaches them.
AUDIENCE_WRITTEN = "audience_written"  # recipients written, audience not yet frozen (runner)
CLAIMED = "claimed"  # a batch's rows claimed (pending -> sending), nothing sent yet (runner)
ANSWERED = "answered"  # the provider answered the batch, nothing recorded yet (runner)
ENGINE_ANSWERED = "engine_answered"  # the send engine has the batch's answers, not yet handed back (engine)
RECORDED = "recorded"  # a batch's outcomes committed, the next not yet claimed (runner)


def pause_point(name: str) -> None:
    """Stop here for good if the fault suite armed this point and no process stopped at it yet."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    try:
        armed = (Path(folder) / "armed").read_text().split()
    except FileNotFoundError:
        return
    if name not in armed:
        return
    try:
        fd = os.open(Path(folder) / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    while True:
        time.sleep(3600)
