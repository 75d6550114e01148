"""The progress line of `campaigns start --wait` and `campaigns demo` when stderr is a log file."""

from __future__ import annotations

from campaigns.cli.common import ProgressLine


def test_in_a_log_file_the_progress_is_lines_not_one_endless_redrawn_line(capsys):
    """A `\\r` redraw in a file piles every update onto one line; there the line is written when it changes,
    at most every `every` seconds, and the last state at the end."""
    line = ProgressLine(prefix="  ", every=60)
    for shown in ("10% sent", "10% sent", "50% sent", "100% sent"):
        line.show(shown)
    line.end()
    assert capsys.readouterr().err == "  10% sent\n  100% sent\n"
