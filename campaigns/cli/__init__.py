"""The `campaigns` command. Ids go to stdout alone (scripts capture them); everything else to stderr.

This package's `__init__` is the whole command line on one page: the parser (every command, option and help
text, in the order `campaigns --help` lists them) and `main`, which sets up logging and the embedded services,
runs the command and turns a refusal into an exit code. The commands live by what they touch: `tenants`
(organizations, numbers, portfolios, API tokens), `contacts`, `actions` (what changes a campaign), `reports`
(what reads one), `runtime` (the servers and processes); `common` holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sqlalchemy.exc import DataError

from campaigns.cli.actions import cmd_create, cmd_retry_failed, cmd_schedule, cmd_start, cmd_transition
from campaigns.cli.common import err
from campaigns.cli.contacts import cmd_contacts_import
from campaigns.cli.reports import cmd_list, cmd_recipients, cmd_stats
from campaigns.cli.runtime import (
    cmd_api_serve,
    cmd_db_upgrade,
    cmd_demo,
    cmd_ingest,
    cmd_run,
    cmd_sandbox_serve,
    cmd_serve,
    cmd_stop,
    cmd_webhooks_serve,
    cmd_worker,
)
from campaigns.cli.tenants import (
    cmd_api_revoke,
    cmd_api_token,
    cmd_numbers_add,
    cmd_numbers_limits,
    cmd_orgs_add,
    cmd_orgs_list,
    cmd_portfolios_add,
    limit_arguments,
)
from campaigns.errors import CampaignError
from campaigns.infra.embedded import bootstrap
from campaigns.store.schema import API_ROLES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="campaigns", description="PyTake Campaigns: WhatsApp campaigns on Prefect")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(fn=cmd_db_upgrade, prefect=False)

    orgs = sub.add_parser("orgs", help="organizations").add_subparsers(dest="orgs_command", required=True)
    a = orgs.add_parser("add", help="add an organization; prints its id")
    a.add_argument("name")
    a.set_defaults(fn=cmd_orgs_add, prefect=False)
    a = orgs.add_parser("list", help="every organization: id, numbers, campaigns, name")
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=cmd_orgs_list, prefect=False)

    nums = sub.add_parser("numbers", help="WhatsApp numbers").add_subparsers(dest="numbers_command", required=True)
    a = nums.add_parser("add", help="add a number; its credentials go to a Prefect block; prints its id")
    a.add_argument("--org", required=True)
    a.add_argument("--provider", required=True, choices=["meta_cloud", "evolution", "sandbox"])
    a.add_argument("--phone-number-id", required=True, help="Meta phone number id, or Evolution instance")
    # Secrets may come from the environment instead, out of `ps` and the shell's history.
    env = os.environ
    a.add_argument(
        "--token",
        default=env.get("NUMBER_TOKEN"),
        required="NUMBER_TOKEN" not in env,
        help="Bearer token (Meta) or apikey (Evolution); or set NUMBER_TOKEN",
    )
    a.add_argument("--app-secret", default=env.get("NUMBER_APP_SECRET", ""), help="or set NUMBER_APP_SECRET")
    a.add_argument("--verify-token", default=env.get("NUMBER_VERIFY_TOKEN", ""), help="or set NUMBER_VERIFY_TOKEN")
    a.add_argument("--api-base", required=True)
    a.add_argument("--mps", type=int, default=80, help="messages per second (Meta default 80)")
    a.add_argument("--display-phone-number", default=None)
    a.add_argument("--graph-version", default="v24.0")
    limit_arguments(a)
    a.set_defaults(fn=cmd_numbers_add, prefect=True)

    a = nums.add_parser("limits", help="change a number's rate and caps; prints the limits in force")
    a.add_argument("number_id")
    a.add_argument("--org", required=True)
    a.add_argument("--mps", dest="set_mps", type=int, help="messages per second")
    limit_arguments(a)
    a.set_defaults(fn=cmd_numbers_limits, prefect=False)

    pfs = sub.add_parser("portfolios", help="business portfolios (Meta's messaging limit)").add_subparsers(
        dest="portfolios_command", required=True
    )
    a = pfs.add_parser("add", help="add or update a portfolio; prints its id")
    a.add_argument("name")
    a.add_argument("--org", required=True)
    a.add_argument(
        "--limit",
        required=True,
        choices=["250", "2000", "10000", "100000", "unlimited"],
        help="unique recipients per moving 24 h across the portfolio's numbers",
    )
    a.set_defaults(fn=cmd_portfolios_add, prefect=False)

    cts = sub.add_parser("contacts", help="contacts").add_subparsers(dest="contacts_command", required=True)
    a = cts.add_parser("import", help="import contacts from CSV")
    a.add_argument("file")
    a.add_argument("--org", required=True)
    a.set_defaults(fn=cmd_contacts_import, prefect=False)

    a = sub.add_parser("retry-failed", help="send again to failed recipients (never to opted-out ones)")
    a.add_argument("id")
    a.add_argument("--org")
    a.add_argument("--code", type=int, action="append", help="only failures with this error code (repeatable)")
    a.set_defaults(fn=cmd_retry_failed, prefect=True)

    a = sub.add_parser("list", help="the organization's campaigns, newest first")
    a.add_argument("--org", required=True)
    a.add_argument("--status", help="draft, scheduled, running, paused, completed, cancelled or failed")
    a.add_argument("--skip", type=int, default=0)
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=cmd_list, prefect=False)

    a = sub.add_parser("create", help="create a campaign from the seed's JSON body; prints its id")
    a.add_argument("file")
    a.add_argument("--org", required=True)
    a.set_defaults(fn=cmd_create, prefect=False)

    a = sub.add_parser("start", help="preflight and start a campaign")
    a.add_argument("id")
    a.add_argument("--org")
    a.add_argument("--wait", action="store_true", help="show progress until it stops")
    a.set_defaults(fn=cmd_start, prefect=True)

    a = sub.add_parser("schedule", help="start the campaign by itself at a time (a send-campaign run under Upcoming)")
    a.add_argument("id")
    a.add_argument("--org")
    a.add_argument("--at", help="ISO time with zone; default: the campaign's scheduled_at")
    a.set_defaults(fn=cmd_schedule, prefect=True)

    for name in ("pause", "resume", "cancel"):
        a = sub.add_parser(name, help=f"{name} a campaign")
        a.add_argument("id")
        a.add_argument("--org")
        a.set_defaults(fn=cmd_transition, prefect=True)  # a scheduled campaign's run in Prefect follows

    for name in ("stats", "progress", "retry-stats"):
        a = sub.add_parser(name, help=f"campaign {name}")
        a.add_argument("id")
        a.add_argument("--org")
        a.add_argument("--json", action="store_true")
        a.set_defaults(fn=cmd_stats, prefect=False)

    a = sub.add_parser("recipients", help="per-contact statuses, a page at a time, or every one as CSV")
    a.add_argument("id")
    a.add_argument("--org")
    a.add_argument("--status", help="pending, sending, sent, delivered, read, failed, skipped, cancelled or replied")
    a.add_argument("--page-size", type=int, help="recipients per page (default 100, at most 1000)")
    a.add_argument("--after", help="the cursor printed for the next page")
    a.add_argument("--json", action="store_true", help="the seed's per-contact JSON, with paging")
    a.add_argument("--csv", metavar="FILE|-", help="export every matching recipient as CSV")
    a.set_defaults(fn=cmd_recipients, prefect=False)

    a = sub.add_parser("run", help="run the send-campaign flow in this process (what `start` spawns)")
    a.add_argument("id")
    a.add_argument(
        "--supervise",
        action="store_true",
        help="run it in a child process, started again while the campaign runs with nobody sending",
    )
    a.set_defaults(fn=cmd_run, prefect=True)

    a = sub.add_parser("serve", help="serve the Prefect deployments (UI runs, schedules, the main app)")
    a.add_argument("--limit", type=int, default=500, help="campaign runs at once in this process (each a thread)")
    a.set_defaults(fn=cmd_serve, prefect=True)

    a = sub.add_parser("worker", help="this machine as a worker of the `campaigns` work pool (prefect.yaml)")
    a.add_argument("--queue", choices=("campaigns", "housekeeping"), default="campaigns")
    a.add_argument("--limit", type=int, default=None, help="runs at once (campaigns: each a process of ~300 MB)")
    a.add_argument("--name", default=None, help="the worker's name in the Prefect UI")
    a.set_defaults(fn=cmd_worker, services=False, console="INFO")  # a worker's terminal names each run it takes

    a = sub.add_parser("ingest", help="apply stored webhook events now")
    a.set_defaults(fn=cmd_ingest, prefect=False)

    a = sub.add_parser("demo", help="a whole campaign against the built-in sandbox")
    a.add_argument("--contacts", type=int, default=10_000)
    a.add_argument("--latency-ms", type=int, default=100)
    a.set_defaults(fn=cmd_demo, prefect=True)

    a = sub.add_parser("stop", help="stop the embedded Postgres, Redis and Prefect server (their data stays)")
    a.add_argument("--all", action="store_true", help="also those of the tests and benches (under the same home)")
    a.set_defaults(fn=cmd_stop, services=False)

    sb = sub.add_parser("sandbox", help="the built-in Meta-like provider").add_subparsers(dest="sb", required=True)
    a = sb.add_parser("serve")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8088)
    a.add_argument("--latency-ms", type=int, default=100)
    a.add_argument("--mps-cap", type=int, default=None)
    a.add_argument("--webhook-url", default=None)
    a.add_argument("--app-secret", default=None, help="the secret its webhooks are signed with (default: a new one)")
    a.set_defaults(fn=cmd_sandbox_serve, prefect=False, services=False)

    wh = sub.add_parser("webhooks", help="the webhook receiver").add_subparsers(dest="wh", required=True)
    a = wh.add_parser("serve")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8089)
    a.set_defaults(fn=cmd_webhooks_serve, prefect=True)

    api = sub.add_parser("api", help="the HTTP API the main app uses").add_subparsers(dest="api", required=True)
    a = api.add_parser("serve", help="serve /api/v1 (start and resume hand campaigns to `campaigns serve`)")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8090)
    a.set_defaults(fn=cmd_api_serve, prefect=True)
    a = api.add_parser("token", help="issue a bearer token for an organization; prints it, once")
    a.add_argument("--org", required=True)
    a.add_argument("--role", required=True, choices=API_ROLES)
    a.add_argument("--expires-days", type=float, default=None, help="refused after this many days (default: never)")
    a.set_defaults(fn=cmd_api_token, prefect=False)
    a = api.add_parser("revoke", help="refuse a token from now on")
    a.add_argument("token_id")
    a.set_defaults(fn=cmd_api_revoke, prefect=False)
    return p


def _runtime_dir() -> None:
    """The embedded servers' sockets want XDG_RUNTIME_DIR; without it platformdirs warns on every command."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path(f"/tmp/campaigns-runtime-{os.getuid()}")
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def _prefect_logging(console: str = "WARNING") -> None:
    """Runs log at INFO to the Prefect API (an operator reads their story in the UI; flow-run processes
    started by `serve` inherit this), `campaigns.*` warnings included; the terminal shows only warnings,
    since our own output is the interface. Settings the user made win."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", console)
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "campaigns")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # the API's own logs, say


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _runtime_dir()
    _prefect_logging(getattr(args, "console", "WARNING"))
    terminal = logging.StreamHandler(sys.stderr)
    # The handler's own level: records of Prefect's run loggers arrive here at INFO (they go to the UI).
    terminal.setLevel(os.environ.get("CAMPAIGNS_LOG_LEVEL", "WARNING"))
    logging.basicConfig(
        level=terminal.level, handlers=[terminal], format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Prefect's event sender says "Still processing items" while it flushes at exit: progress, not a problem.
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)
    if getattr(args, "services", True):
        bootstrap(prefect=args.prefect)
    try:
        return args.fn(args)
    except CampaignError as exc:  # refused, whichever kind (not found, conflict, invalid): exit 1
        err(f"error: {exc.message}")
        for detail in exc.details:
            err(f"  - {detail}")
        return 1
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:  # a path given on the command line
        err(f"error: {exc.strerror}: {exc.filename}")
        return 2
    except DataError as exc:  # a value no check caught, refused by Postgres: the caller's, not a crash
        err(f"error: a value was refused by the database: {str(exc.orig).splitlines()[0] if exc.orig else exc}")
        return 2
