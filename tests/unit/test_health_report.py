"""What /health answers is worked out from its checks: a failing one is reported, never raised, and a
password in a connection error never reaches the answer."""

from __future__ import annotations

from campaigns.infra import health


def test_a_failing_check_is_reported_never_raised():
    def broken() -> None:
        raise ConnectionError("refused by postgresql://app:s3cret@db:5432/x")

    status, body = health.report({"db": broken, "fine": lambda: None})
    assert status == 503 and body["checks"] == {
        "db": "down: ConnectionError: refused by postgresql://app:***@db:5432/x",
        "fine": "ok",
    }
