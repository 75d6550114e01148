"""The processes: `serve` (the Prefect deployments), `run` (one campaign's flow, supervised or not), the HTTP
servers (`sandbox serve`, `webhooks serve`, `api serve`), `ingest`, `demo`, `stop`, and `db upgrade`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

from campaigns.cli.common import db, err


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from campaigns.store.db import upgrade

    upgrade()
    err("database is up to date")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.supervise:  # the flow in a child process, started again if it dies with the campaign running
        from campaigns.sending.runner import supervise

        lost = supervise(db(), uuid.UUID(args.id), _runner_starter(args.id))
        err(f"campaign {args.id}: its runner was started again {lost} times" if lost else f"campaign {args.id}: done")
        return 0
    return _run_flow(args.id)


def _run_flow(campaign_id: str) -> int:
    from campaigns.sending.engine_process import start_engine_warm
    from flows.send_campaign import send_campaign

    start_engine_warm()  # now, while this process has one thread: the flow starts Prefect's
    state = send_campaign(uuid.UUID(campaign_id), return_state=True)
    err(f"{state.name}: {state.message}")
    return 1 if state.is_failed() or state.is_crashed() else 0


def _runner_starter(campaign_id: str) -> Callable[[], int | None]:
    """How `run --supervise` starts the campaign's runner, each time it (re)starts it: as a fork of itself,
    which has imported the flow already, rather than a new interpreter that imports for seconds (over 8 on a
    busy machine) while the campaign sends nothing. A fork copies only the calling thread (a lock held by
    another would stay locked in the copy), so it is used while the supervisor runs no other thread, and where
    the platform has fork; otherwise the runner is a new interpreter, as before."""
    import multiprocessing
    import threading

    command = [sys.executable, "-m", "campaigns.cli", "run", campaign_id]

    def new_interpreter() -> int:
        return subprocess.run(command, env=os.environ, check=False).returncode

    if "fork" not in multiprocessing.get_all_start_methods():
        return new_interpreter
    import flows.send_campaign  # noqa: F401  (once, here: every fork has it)

    def fork() -> int | None:
        if threading.active_count() > 1:
            return new_interpreter()
        runner = multiprocessing.get_context("fork").Process(target=_forked_runner, args=(campaign_id,))
        runner.start()
        runner.join()
        return runner.exitcode

    return fork


def _forked_runner(campaign_id: str) -> None:
    """A runner forked from its supervisor (multiprocessing's fork start: it exits as a process should, Prefect's
    logs and events flushed). The supervisor's pooled Postgres connections are its sockets: dropped unclosed."""
    db().dispose(close=False)
    sys.exit(_run_flow(campaign_id))


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.serve import main as serve_main

    err(
        "serving send-campaign/default, ingest-statuses/default, campaign-scheduler/default, create-campaign/default "
        "and campaign-control/default (Ctrl-C to stop)"
    )
    serve_main(limit=args.limit)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Check this machine's setup (deployments/worker.py), then become Prefect's process worker for the queue."""
    from deployments.worker import POOL, setup_problems, worker_command, worker_environment

    if problems := setup_problems():
        err("error: this machine cannot be a worker of the `campaigns` pool yet:")
        for problem in problems:
            err(f"  - {problem}")
        return 2
    command = worker_command(args.queue, args.limit, args.name)
    err(f"worker of pool {POOL}, queue {args.queue}: {' '.join(command[1:])}")
    sys.stderr.flush()
    os.execve(command[0], command, worker_environment())  # Prefect's worker itself: signals reach it directly
    return 0  # not reached


def cmd_stop(args: argparse.Namespace) -> int:
    from campaigns.infra.embedded import stop_services
    from campaigns.settings import get_settings

    home = get_settings().campaigns_home.resolve()
    homes = [home, *sorted(p for p in home.glob("*") if p.is_dir())] if args.all else [home]
    for h in homes:
        if stopped := stop_services(h):
            err(f"{h}: stopped {', '.join(stopped)}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from campaigns.webhooks.ingest import ingest_pending

    r = ingest_pending(db())
    err(f"ingested {r.events} events, {r.statuses} statuses ({r.unmatched} not matched yet)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from campaigns.demo import run_demo

    return run_demo(args.contacts, latency_ms=args.latency_ms)


def cmd_sandbox_serve(args: argparse.Namespace) -> int:
    import secrets

    from sandbox import SandboxConfig, serve

    app_secret = args.app_secret or secrets.token_urlsafe(24)
    if not args.app_secret:  # never a constant: a number registered with it would let anyone sign its webhooks
        err(f"signing webhooks with the app secret {app_secret} (give the number the same; --app-secret to choose)")
    config = SandboxConfig(
        latency_ms=args.latency_ms, mps_cap=args.mps_cap, webhook_url=args.webhook_url, app_secret=app_secret
    )
    err(
        f"sandbox (Meta's Cloud API and Evolution's wire) on http://{args.host}:{args.port}; admin at /_sandbox/"
        f"config, /_sandbox/stats, /_sandbox/messages (Ctrl-C to stop)"
    )
    serve(config, args.host, args.port)
    return 0


def cmd_webhooks_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from blocks.numbers import secrets_loader
    from campaigns.settings import get_settings
    from campaigns.webhook_app import create_app
    from campaigns.webhooks.receiver import KnownSecrets

    settings = get_settings()
    if problem := _schema_problem():
        err(f"cannot serve: {problem}")
        return 2
    app = create_app(settings.database_url or "", KnownSecrets(loader=secrets_loader), settings.webhook_max_body_bytes)
    err(
        f"receiving webhooks on http://{args.host}:{args.port}/webhooks/whatsapp (Meta) and "
        f"/webhooks/evolution/{{instance}} (Ctrl-C to stop)"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_config=server_log_config())
    return 0


def cmd_api_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from campaigns.api import create_app

    if problem := _schema_problem():
        err(f"cannot serve: {problem}")
        return 2
    err(f"serving the HTTP API on http://{args.host}:{args.port}/api/v1 (start and resume need `campaigns serve`)")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_config=server_log_config())
    return 0


def _schema_problem() -> str | None:
    from campaigns.store.db import get_engine, schema_behind

    return schema_behind(get_engine())


def server_log_config() -> dict[str, Any]:
    """Access lines and errors, as text or JSON (LOG_FORMAT, ACCESS_LOG)."""
    from campaigns.infra.serverlog import uvicorn_config
    from campaigns.settings import get_settings

    settings = get_settings()
    return uvicorn_config(settings.log_format, settings.access_log)
