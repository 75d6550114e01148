"""What changes a campaign: `create`, `start` (and `--wait`), `schedule`, `pause`, `resume`, `cancel`,
`retry-failed`, and how a running campaign is handed to Prefect (or, with nothing serving it, to a process
of its own running `campaigns run --supervise`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pydantic import ValidationError

from campaigns.cli.common import ProgressLine, as_json, db, err, org_of
from campaigns.control import lifecycle, tenancy
from campaigns.errors import Invalid


def cmd_retry_failed(args: argparse.Namespace) -> int:
    with db().begin() as conn:
        org = org_of(conn, args.id, args.org)
        t, n = lifecycle.retry_failed(conn, org, uuid.UUID(args.id), args.code)
    _launch(org, uuid.UUID(args.id))
    err(f"campaign {args.id}: {n} failed recipients back to pending; {t.previous} -> {t.status}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from campaigns.store.db import iso_z

    with db().begin() as conn:
        org = org_of(conn, args.id, args.org)
        try:
            at = datetime.fromisoformat(args.at) if args.at else None
        except ValueError:
            raise Invalid(f"--at: not an ISO date and time: {args.at!r}") from None
        t = lifecycle.schedule(conn, org, uuid.UUID(args.id), at)
        when = lifecycle.get(conn, org, args.id)["scheduled_at"]
    from campaigns.control.services import follow_transition
    from deployments.launch import PrefectRuns

    if run_id := follow_transition(db(), org, uuid.UUID(args.id), t, PrefectRuns()):
        err(
            f"campaign {args.id}: {t.previous} -> {t.status}; send-campaign flow run {run_id} starts it at "
            f"{iso_z(when)} (Upcoming in Prefect)"
        )
        return 0
    soon = " (a time already past: within 30 s)" if when <= datetime.now(UTC) else ""
    err(
        f"campaign {args.id}: {t.previous} -> {t.status}; campaign-scheduler (campaigns serve) starts it at "
        f"{iso_z(when)}{soon}"
    )
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from campaigns import json_input
    from campaigns.control.models import CampaignCreate, describe_validation_error

    try:
        body = CampaignCreate.model_validate(json_input.parse(Path(args.file).read_bytes(), f"{args.file}"))
    except Invalid as exc:
        err(f"invalid campaign: {exc.message}")
        return 2
    except ValidationError as exc:
        err(f"invalid campaign: {describe_validation_error(exc)}")
        return 2
    with db().begin() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        print(lifecycle.create(conn, org, body))
    return 0


def _launch(org: uuid.UUID, campaign_id: uuid.UUID) -> None:
    """Hand the campaign to the served send-campaign deployment, as the API does, so its run shows in the
    Prefect UI like any other; with nothing serving it, run the flow in a process of its own instead."""
    from campaigns.api import PrefectLauncher, Unavailable
    from campaigns.control.services import record_flow_run

    launcher = PrefectLauncher()
    try:
        launcher.ready()
    except Unavailable:
        _spawn_runner(campaign_id)
        err(
            "nothing serves send-campaign/default: running the campaign in a background process (its log is in "
            f"{_run_log(campaign_id)}; `campaigns serve` runs campaigns for the Prefect UI)"
        )
        return
    run_id = launcher(campaign_id)
    with db().begin() as conn:
        record_flow_run(conn, org, campaign_id, run_id)
    err(f"flow run {run_id} (send-campaign/default)")


def _run_log(campaign_id: uuid.UUID) -> Path:
    from campaigns.settings import get_settings

    return get_settings().campaigns_home.resolve() / "logs" / f"run-{campaign_id}.log"


def _spawn_runner(campaign_id: uuid.UUID) -> None:
    """Start the campaign's flow run in its own process; it outlives this command."""
    path = _run_log(campaign_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.open("ab")
    subprocess.Popen(
        [sys.executable, "-m", "campaigns.cli", "run", str(campaign_id), "--supervise"],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ,
    )


def cmd_start(args: argparse.Namespace) -> int:
    from blocks.whatsapp import fresh_credentials
    from campaigns.control.services import start_campaign
    from deployments.launch import PrefectRuns

    with db().begin() as conn:
        org = org_of(conn, args.id, args.org)
    result = start_campaign(db(), org, uuid.UUID(args.id), credentials=fresh_credentials, runs=PrefectRuns())
    _launch(org, uuid.UUID(args.id))
    err(as_json(result))
    print(args.id)
    if args.wait:
        return _wait(uuid.UUID(args.id), org)
    return 0


def _wait(campaign_id: uuid.UUID, org: uuid.UUID) -> int:
    from campaigns.control.services import progress_of
    from campaigns.reporting.stats import progress_line

    line = ProgressLine()
    while True:
        with db().connect() as conn:
            p = progress_of(conn, org, campaign_id)
        line.show(progress_line(p))
        if p["current_status"] not in ("running", "scheduled", "draft"):
            line.end()
            return 0
        time.sleep(0.5)


def cmd_transition(args: argparse.Namespace) -> int:
    fn = {"pause": lifecycle.pause, "resume": lifecycle.resume, "cancel": lifecycle.cancel}[args.command]
    with db().begin() as conn:
        org = org_of(conn, args.id, args.org)
        t = fn(conn, org, uuid.UUID(args.id))
    if t.status == "running":  # resumed; one resumed to "scheduled" is started by the scheduler
        _launch(org, uuid.UUID(args.id))
    else:  # Prefect's Upcoming follows: a scheduled run for a campaign scheduled again, none for a paused one
        from campaigns.control.services import follow_transition
        from deployments.launch import PrefectRuns

        follow_transition(db(), org, uuid.UUID(args.id), t, PrefectRuns())  # a cancelled one's suspended run ends
    err(f"campaign {args.id}: {t.previous} -> {t.status}")
    return 0
