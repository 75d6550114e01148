"""The fault suite prints one line per scenario at the end of the session (tests/faults/harness.py)."""

from __future__ import annotations

import json
import os

import pytest

from tests.faults.harness import Verdict, report_path


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the session's start, not each worker's
        report_path().unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    path = report_path()
    if not path.exists():
        return
    terminalreporter.section("fault scenarios")
    for line in path.read_text().splitlines():
        terminalreporter.write_line(Verdict(**json.loads(line)).line())


@pytest.fixture
def pause_dir(tmp_path):
    """Where a process stopped at a pause point writes its pid."""
    folder = tmp_path / "pause"
    folder.mkdir()
    return folder
