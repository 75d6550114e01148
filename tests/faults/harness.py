"""The fault suite's harness: run a campaign against the sandbox, inject a fault, let the documented recovery
act, then judge by the sandbox's own record against Postgres.

Each scenario ends in one Verdict: every eligible recipient accepted exactly once (duplicates, missing), the
statistics equal to what the sandbox did, and the time to recover (from the fault to the first message the
sandbox accepted after it, and to the campaign's completion). `record(verdict)` appends it to the session's
report, which tests/faults/conftest.py prints at the end (`make faults` shows one line per scenario).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaigns.infra import faultpoints
from campaigns.webhooks.ingest import ingest_pending
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    cli,
    create_campaign,
    org_name,
    phones,
    wait_for,
    wait_for_value,
)

REPORT_NAME = "faults-report.jsonl"
SENT_LIKE = {"sent", "delivered", "read"}


def report_path() -> Path:
    """One report per test session, shared by its xdist workers (their own folders are per worker)."""
    root = Path(__file__).resolve().parents[2] / ".campaigns"
    return root / f"{os.environ.get('TEST_SLOT', '0')}-{REPORT_NAME}"


@dataclass
class Verdict:
    scenario: str
    eligible: int
    accepted: int
    duplicates: int
    missing: int
    stats_exact: bool
    status: str
    resumed_after_s: float | None = None  # the longest pause in sending after a fault
    completed_after_s: float | None = None  # fault -> the campaign completed
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        def secs(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}s"

        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        exact = "yes" if self.stats_exact else "NO"
        return (
            f"{self.scenario:<34} duplicates={self.duplicates} missing={self.missing} stats_exact={exact} "
            f"longest pause in sending {secs(self.resumed_after_s)}, completed {secs(self.completed_after_s)} "
            f"after the fault ({self.status}, {self.accepted} accepted of {self.eligible} eligible){extra}"
        )


def record(verdict: Verdict) -> Verdict:
    path = report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(asdict(verdict)) + "\n")
    return verdict


# ---- setting up -------------------------------------------------------------------------------------------


def new_campaign(
    db: sa.Engine, org: uuid.UUID, sandbox: Any, total: int, mps: int, start: int = 0, **campaign: Any
) -> uuid.UUID:
    """A template campaign to `total` new contacts over a sandbox number sending at `mps`."""
    number = add_sandbox_number(db, org, sandbox, mps=mps)
    add_contacts(db, org, [{"phone": p, "name": f"C{i}"} for i, p in enumerate(phones(total, start=start))])
    return create_campaign(db, org, number, **campaign)


def number_of(db: sa.Engine, cid: uuid.UUID) -> uuid.UUID:
    return campaign_row(db, cid)["whatsapp_number_id"]


def pause_env(folder: Path) -> dict[str, str]:
    """The environment that lets the processes of a scenario stop at the points it arms."""
    return {faultpoints.ENV: str(folder)}


def arm(folder: Path, point: str) -> None:
    """The next process reaching `point` stops there (campaigns/infra/faultpoints.py)."""
    (folder / "armed").write_text(point)


def start_from_cli(db: sa.Engine, org: uuid.UUID, cid: uuid.UUID) -> None:
    """`campaigns start` with nothing serving: the campaign runs in the background under its supervisor, which
    starts its runner again when it is lost (README, "What survives what")."""
    cli("start", str(cid), "--org", org_name(db, org))


def paused_pid(folder: Path, point: str, timeout: float = 120.0) -> int:
    """The pid of the process stopped at `point`, once it is there."""
    path = folder / point
    pid = wait_for_value(
        lambda: path.exists() and path.read_text().strip(),
        timeout,
        message=f"no process reached the pause point {point!r} in {timeout:.0f} s",
    )
    return int(pid)


def sigkill(pid: int) -> float:
    """Kill -9; returns when it happened (wall clock, as the sandbox stamps its records)."""
    at = time.time()
    os.kill(pid, signal.SIGKILL)
    return at


def pids_of(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def children_of(pid: int) -> list[int]:
    """Live children only (a zombie, a child that died and was not reaped yet, is none)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if _state(int(p)) not in ("Z", None)]


def _stat(pid: int, field: int) -> str | None:
    """A field of /proc/<pid>/stat after the command's name: 0 the state, 1 the parent's pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[field]
    except (OSError, IndexError):
        return None


def _state(pid: int) -> str | None:
    return _stat(pid, 0)


def _parent(pid: int) -> int | None:
    ppid = _stat(pid, 1)
    return int(ppid) if ppid else None


def runner_pid(cid: uuid.UUID, timeout: float = 60.0) -> int:
    """The flow process running the campaign under its supervisor (not the supervisor itself): the
    supervisor's child, a fork of it (same command line) or a new interpreter (`campaigns.cli run <id>`)."""

    def one() -> int | None:
        forks = pids_of(f"campaigns.cli run {cid} --supervise$")  # the supervisor, and its forks: one command line
        supervisors = [pid for pid in forks if _parent(pid) not in forks]
        found = children_of(supervisors[0]) if len(supervisors) == 1 else []
        return found[0] if len(found) == 1 else None

    return wait_for_value(one, timeout, 0.1, message=f"no runner process for campaign {cid}")


def engine_pid(runner: int, timeout: float = 60.0) -> int:
    """The send-engine process (campaigns/sending/engine_process.py) of a runner: its child, a fork of it or a
    new interpreter."""

    def first() -> int | None:
        found = children_of(runner)
        return found[0] if found else None

    return wait_for_value(first, timeout, 0.1, message=f"runner {runner} has no send engine")


def stop_leftovers(cid: uuid.UUID) -> None:
    """A scenario that failed may leave its supervisor and runner behind: end them (only this campaign's)."""
    for pid in pids_of(f"campaigns.cli run {cid}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until_settled(db: sa.Engine, cid: uuid.UUID, timeout: float = 240.0) -> str:
    """The campaign's status once it is no longer running (or still running at the timeout)."""
    with contextlib.suppress(AssertionError):  # still running: the verdict says so
        wait_for(lambda: campaign_row(db, cid)["status"] != "running", timeout, 0.25)
    return campaign_row(db, cid)["status"]


def wait_accepted(sandbox: Any, count: int, timeout: float = 120.0) -> None:
    wait_for(
        lambda: len(sandbox.messages()) >= count,
        timeout,
        message=f"the sandbox accepted fewer than the {count} awaited in {timeout:.0f} s",
    )


# ---- judging ----------------------------------------------------------------------------------------------


def _rows(db: sa.Engine, cid: uuid.UUID) -> list[Any]:
    with db.connect() as conn:
        return conn.execute(
            sa.text("""
            select id, status, replied_at is not null as replied from campaign_recipients where campaign_id = :c
        """),
            {"c": cid},
        ).all()


def sent_ids(db: sa.Engine, cid: uuid.UUID) -> set[int]:
    """The rows Postgres says were sent (the eligible ones of a campaign that stopped on purpose: a cap, a
    Cancel)."""
    with db.connect() as conn:
        return set(
            conn.execute(
                sa.text("""
            select id from campaign_recipients where campaign_id = :c and status in ('sent', 'delivered', 'read')
        """),
                {"c": cid},
            ).scalars()
        )


def settle_statuses(db: sa.Engine, sandbox: Any) -> None:
    """What `campaigns serve`'s ingestion does in the background: every status the sandbox posted is applied."""
    sandbox.drain_webhooks(timeout=30)
    for _ in range(3):
        ingest_pending(db)
        time.sleep(0.2)


def judge(
    db: sa.Engine,
    sandbox: Any,
    cid: uuid.UUID,
    scenario: str,
    faults: list[float],
    eligible_ids: set[int] | None = None,
    **extra: Any,
) -> Verdict:
    """The sandbox's record against Postgres. `faults`: when each fault happened; the time to send again is
    the worst over them, the time to complete counts from the last. `eligible_ids`: the rows that should have
    been accepted (all the campaign's, unless a cap allows fewer)."""
    settle_statuses(db, sandbox)
    rows = _rows(db, cid)
    eligible = {r.id for r in rows} if eligible_ids is None else eligible_ids
    mine = {f"pytake:{r.id}" for r in rows}
    records = [m for m in sandbox.messages() if m["biz_opaque_callback_data"] in mine]
    counts: dict[str, int] = {}
    for m in records:
        counts[m["biz_opaque_callback_data"]] = counts.get(m["biz_opaque_callback_data"], 0) + 1
    row = campaign_row(db, cid)
    completed = row["completed_at"].timestamp() if row["completed_at"] and row["status"] == "completed" else None
    return record(
        Verdict(
            scenario=scenario,
            eligible=len(eligible),
            accepted=len(counts),
            duplicates=sum(n - 1 for n in counts.values()),
            missing=len({f"pytake:{i}" for i in eligible} - set(counts)),
            stats_exact=not (wrong := stats_mismatches(rows, records)),
            status=row["status"],
            resumed_after_s=resumed_after(records, faults),
            completed_after_s=completed - faults[-1] if completed and faults else None,
            extra={**extra, **({"rows_differing": f"{len(wrong)} ({'; '.join(wrong[:3])})"} if wrong else {})},
        )
    )


def resumed_after(records: list[dict[str, Any]], faults: list[float]) -> float | None:
    """The longest pause in sending from a fault on: the widest gap between the fault and the acceptances
    after it (requests already on the wire when a process died still land just after the kill, so the time
    to the next acceptance alone would say 0). None: nothing was sent after any fault."""
    times = sorted(m["accepted_at"] for m in records)
    pauses = []
    for at in faults:
        after = [at, *(t for t in times if t > at)]
        if len(after) > 1:
            pauses.append(max(b - a for a, b in itertools.pairwise(after)))
    return max(pauses, default=None)


def stats_mismatches(rows: list[Any], records: list[dict[str, Any]]) -> list[str]:
    """Rows whose status (or reply) is not the last status the sandbox reported for their message, or counted
    as sent although the sandbox never accepted them: `row id: ours != the sandbox's`."""
    truth = {m["biz_opaque_callback_data"]: m for m in records}
    wrong = []
    for r in rows:
        m = truth.get(f"pytake:{r.id}")
        theirs = (m.get("final_status", "sent"), m.get("replied", False)) if m else ("never accepted", False)
        if (m is None and r.status in SENT_LIKE) or (m is not None and (r.status, r.replied) != theirs):
            wrong.append(
                f"{r.id}: {r.status}{' replied' if r.replied else ''} != {theirs[0]}{' replied' if theirs[1] else ''}"
            )
    return wrong
