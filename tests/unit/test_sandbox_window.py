"""The sandbox's throughput window (sandbox/rules.py Throughput), with the clock passed in: a number refuses
with 130429 as Meta does once `mps_cap` messages were accepted in the last second, and takes more as soon as
the oldest of them is a second old. The tests that send through the sandbox rely on it being exact."""

from __future__ import annotations

import pytest

from sandbox.config import SandboxConfig
from sandbox.errors import GraphError
from sandbox.rules import Throughput

CAP = SandboxConfig(mps_cap=3)


def accept(window: Throughput, number: str, now: float) -> None:
    window.check(CAP, number, now)
    window.count(number, now)


def refused(window: Throughput, number: str, now: float) -> bool:
    try:
        window.check(CAP, number, now)
    except GraphError as exc:
        assert exc.code == 130429
        return True
    return False


def test_the_window_is_full_for_exactly_one_second_after_the_oldest_message():
    window = Throughput()
    for t in (100.0, 100.1, 100.2):
        accept(window, "PN1", t)
    assert refused(window, "PN1", 100.5)  # still inside the second of the first
    assert refused(window, "PN1", 100.999)
    assert not refused(window, "PN1", 101.0)  # the first is a second old: one more fits
    accept(window, "PN1", 101.0)
    assert refused(window, "PN1", 101.05)  # ...and only one: the others are still inside


def test_each_number_has_its_own_window():
    window = Throughput()
    for t in (0.0, 0.1, 0.2):
        accept(window, "PN1", t)
    assert refused(window, "PN1", 0.3) and not refused(window, "PN2", 0.3)


@pytest.mark.parametrize(
    ("spacing", "accepted", "most_in_a_second"),
    [
        (0.2, 24, 3),  # 5 a second offered: 3 of every 5 accepted, never more than 3 in any second
        (0.34, 40, 3),  # just under the cap: every one accepted
        (0.5, 40, 2),
    ],
)
def test_paced_traffic_above_the_cap_slides_the_window_and_never_exceeds_it(spacing, accepted, most_in_a_second):
    window = Throughput()
    taken = 0
    for i in range(40):
        if not refused(window, "PN1", i * spacing):
            window.count("PN1", i * spacing)
            taken += 1
    assert (taken, window.max_window_by_phone) == (accepted, {"PN1": most_in_a_second})


def test_no_cap_refuses_nothing():
    window = Throughput()
    for i in range(1000):
        window.check(SandboxConfig(), "PN1", i / 1000)
        window.count("PN1", i / 1000)
    assert window.max_window == 1000
