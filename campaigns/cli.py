"""The `campaigns` command. Ids go to stdout alone (scripts capture them); everything else to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DataError

from campaigns.control import lifecycle, tenancy
from campaigns.errors import CampaignError, Invalid, NotFound
from campaigns.infra.embedded import bootstrap
from campaigns.store.schema import API_ROLES


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _json(value: Any, indent: int | None = None) -> str:
    """JSON as the HTTP API writes it: times in the seed's form (UTC, Z), ids as strings."""
    from datetime import datetime

    from campaigns.store.db import iso_z

    return json.dumps(value, indent=indent, default=lambda v: iso_z(v) if isinstance(v, datetime) else str(v))


def _db() -> Any:
    from campaigns.store.db import get_engine

    return get_engine()


def _org_of(conn: Any, campaign_id: str, org: str | None) -> uuid.UUID:
    if org:
        return tenancy.org_id_by_name(conn, org)
    try:
        return lifecycle.get_any_org(conn, uuid.UUID(campaign_id))["organization_id"]
    except ValueError:
        raise NotFound("Campaign not found") from None


# -- commands ---------------------------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from campaigns.store.db import upgrade

    upgrade()
    _err("database is up to date")
    return 0


def cmd_retry_failed(args: argparse.Namespace) -> int:
    with _db().begin() as conn:
        org = _org_of(conn, args.id, args.org)
        t, n = lifecycle.retry_failed(conn, org, uuid.UUID(args.id), args.code)
    _launch(org, uuid.UUID(args.id))
    _err(f"campaign {args.id}: {n} failed recipients back to pending; {t.previous} -> {t.status}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from campaigns.control.services import list_campaigns

    with _db().connect() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        body = list_campaigns(conn, org, args.status, args.skip, args.limit)
    if args.json:
        print(_json(body, indent=2))
        return 0
    for c in body["campaigns"]:
        reason = f" ({c['paused_reason']})" if c["paused_reason"] else ""
        print(f"{c['id']}  {c['status'] + reason:<28} {c['total_recipients']:>9}  {c['name']}")
    _err(f"{len(body['campaigns'])} of {body['total']} campaigns")
    return 0


def cmd_orgs_add(args: argparse.Namespace) -> int:
    with _db().begin() as conn:
        print(tenancy.add_org(conn, args.name))
    return 0


def cmd_numbers_add(args: argparse.Namespace) -> int:
    from blocks.numbers import add_number

    with _db().begin() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        number_id = add_number(
            conn,
            org,
            provider=args.provider,
            phone_number_id=args.phone_number_id,
            token=args.token,
            app_secret=args.app_secret,
            verify_token=args.verify_token,
            api_base=args.api_base,
            mps=args.mps,
            display_phone_number=args.display_phone_number,
            graph_version=args.graph_version,
        )
        tenancy.set_number_limits(conn, org, number_id, _limit_changes(args), args.preset)
    print(number_id)
    return 0


def _cap(value: str) -> int | None:
    """A cap on the command line: a positive number, or `none` for no cap."""
    if value.lower() in ("none", "no", "off"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of messages or 'none', got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("a cap must be at least 1 (or 'none' for no cap)")
    return number


def _limit_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line (the preset is applied by tenancy.set_number_limits)."""
    changes: dict[str, Any] = {}
    for name in ("per_minute", "per_hour", "per_day"):
        if getattr(args, name) is not _UNSET:
            changes[name] = getattr(args, name)
    if getattr(args, "set_mps", None) is not None:
        changes["mps"] = args.set_mps
    if args.portfolio is not None:
        changes["portfolio_id"] = None if args.portfolio.lower() == "none" else uuid.UUID(args.portfolio)
    return changes


def cmd_portfolios_add(args: argparse.Namespace) -> int:
    with _db().begin() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        print(tenancy.add_portfolio(conn, org, args.name, None if args.limit == "unlimited" else int(args.limit)))
    return 0


def cmd_numbers_limits(args: argparse.Namespace) -> int:
    with _db().begin() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        limits = tenancy.set_number_limits(conn, org, uuid.UUID(args.number_id), _limit_changes(args), args.preset)
    print(_json(limits))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from campaigns.store.db import iso_z

    with _db().begin() as conn:
        org = _org_of(conn, args.id, args.org)
        try:
            at = datetime.fromisoformat(args.at) if args.at else None
        except ValueError:
            raise Invalid(f"--at: not an ISO date and time: {args.at!r}") from None
        t = lifecycle.schedule(conn, org, uuid.UUID(args.id), at)
        when = lifecycle.get(conn, org, args.id)["scheduled_at"]
    from campaigns.control.services import follow_transition
    from deployments.launch import PrefectRuns

    if run_id := follow_transition(_db(), org, uuid.UUID(args.id), t, PrefectRuns()):
        _err(
            f"campaign {args.id}: {t.previous} -> {t.status}; send-campaign flow run {run_id} starts it at "
            f"{iso_z(when)} (Upcoming in Prefect)"
        )
        return 0
    soon = " (a time already past: within 30 s)" if when <= datetime.now(UTC) else ""
    _err(
        f"campaign {args.id}: {t.previous} -> {t.status}; campaign-scheduler (campaigns serve) starts it at "
        f"{iso_z(when)}{soon}"
    )
    return 0


def cmd_contacts_import(args: argparse.Namespace) -> int:
    from campaigns.audience.contacts import ImportFileError, import_csv
    from campaigns.settings import get_settings

    path = Path(args.file)
    if not path.exists():
        _err(f"file not found: {path}")
        return 2
    try:
        with _db().begin() as conn:
            org = tenancy.org_id_by_name(conn, args.org)
            report = import_csv(conn, org, path, get_settings().default_country_code)
    except ImportFileError as exc:
        _err(f"import refused: {exc}")
        return 2
    if report.encoding in ("windows-1252", "latin-1"):
        _err(f"the file is not UTF-8: read as {report.encoding}")
    for line, reason in report.errors:
        _err(f"line {line}: {reason}")
    _err(
        f"imported {report.imported} contacts ({report.inserted} new, {report.updated} updated); "
        f"{len(report.errors)} rows rejected"
    )
    print(report.imported)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from campaigns import json_input
    from campaigns.control.models import CampaignCreate, describe_validation_error

    try:
        body = CampaignCreate.model_validate(json_input.parse(Path(args.file).read_bytes(), f"{args.file}"))
    except Invalid as exc:
        _err(f"invalid campaign: {exc.message}")
        return 2
    except ValidationError as exc:
        _err(f"invalid campaign: {describe_validation_error(exc)}")
        return 2
    with _db().begin() as conn:
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
        _err(
            "nothing serves send-campaign/default: running the campaign in a background process (its log is in "
            f"{_run_log(campaign_id)}; `campaigns serve` runs campaigns for the Prefect UI)"
        )
        return
    run_id = launcher(campaign_id)
    with _db().begin() as conn:
        record_flow_run(conn, org, campaign_id, run_id)
    _err(f"flow run {run_id} (send-campaign/default)")


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

    with _db().begin() as conn:
        org = _org_of(conn, args.id, args.org)
    result = start_campaign(_db(), org, uuid.UUID(args.id), credentials=fresh_credentials, runs=PrefectRuns())
    _launch(org, uuid.UUID(args.id))
    _err(_json(result))
    print(args.id)
    if args.wait:
        return _wait(uuid.UUID(args.id), org)
    return 0


def _wait(campaign_id: uuid.UUID, org: uuid.UUID) -> int:
    from campaigns.control.services import progress_of
    from campaigns.reporting.stats import progress_line

    while True:
        with _db().connect() as conn:
            p = progress_of(conn, org, campaign_id)
        sys.stderr.write("\r" + progress_line(p))
        sys.stderr.flush()
        if p["current_status"] not in ("running", "scheduled", "draft"):
            sys.stderr.write("\n")
            return 0
        time.sleep(0.5)


def cmd_transition(args: argparse.Namespace) -> int:
    fn = {"pause": lifecycle.pause, "resume": lifecycle.resume, "cancel": lifecycle.cancel}[args.command]
    with _db().begin() as conn:
        org = _org_of(conn, args.id, args.org)
        t = fn(conn, org, uuid.UUID(args.id))
    if t.status == "running":  # resumed; one resumed to "scheduled" is started by the scheduler
        _launch(org, uuid.UUID(args.id))
    else:  # Prefect's Upcoming follows: a scheduled run for a campaign scheduled again, none for a paused one
        from campaigns.control.services import follow_transition
        from deployments.launch import PrefectRuns

        follow_transition(_db(), org, uuid.UUID(args.id), t, PrefectRuns())  # a cancelled one's suspended run ends
    _err(f"campaign {args.id}: {t.previous} -> {t.status}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from campaigns.control.services import progress_of, retry_stats_of, stats_of

    read = {"stats": stats_of, "progress": progress_of, "retry-stats": retry_stats_of}[args.command]
    with _db().connect() as conn:
        org = _org_of(conn, args.id, args.org)
        body = read(conn, org, uuid.UUID(args.id))
    if args.json:
        print(_json(body, indent=2))
    else:
        for k, v in body.items():
            print(f"{k:28} {v}")
    return 0


def cmd_recipients(args: argparse.Namespace) -> int:
    from campaigns.control.services import recipients_of

    if args.csv:
        if args.after is not None or args.page_size is not None:
            _err("error: --csv exports every matching recipient; --after and --page-size do not apply")
            return 2
        return _export_recipients(args)
    with _db().connect() as conn:
        org = _org_of(conn, args.id, args.org)
        size = {} if args.page_size is None else {"page_size": args.page_size}
        body = recipients_of(conn, org, uuid.UUID(args.id), args.status, after=args.after, **size)
    if args.json:
        print(_json(body, indent=2))
    else:
        print(f"{'CONTACT':36}  {'NAME':20}  {'PHONE':15}  {'STATUS':9}  {'TRIES':>5}  DETAIL")
        for contact_id, r in body["recipients"].items():
            detail = (
                r["skip_reason"]
                or (
                    f"{r['error_code'] or ''} {r['error_message'] or ''}".strip()
                    if r["status"] == "failed"
                    else r["message_id"]
                )
                or ""
            )
            print(
                f"{contact_id:36}  {(r['contact_name'] or '')[:20]:20}  {r['contact_phone']:15}  "
                f"{r['status']:9}  {len(r['attempts']):5}  {detail[:80]}"
            )
    more = f"; next page: --after {body['next_cursor']}" if body["next_cursor"] else ""
    _err(f"{len(body['recipients'])} of {body['total']} recipients{more}")
    return 0


def _export_recipients(args: argparse.Namespace) -> int:
    """CSV to stdout, or to a file that appears only once complete (no half export left behind)."""
    from campaigns.control.services import export_recipients as export

    with _db().connect() as conn:
        org = _org_of(conn, args.id, args.org)
        if args.csv == "-":
            try:
                n = export(conn, org, uuid.UUID(args.id), args.status, sys.stdout.buffer)
            except BrokenPipeError:  # `| head`: the reader has seen enough; no traceback
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                conn.invalidate()  # the COPY was cut off midway: this connection is not reusable
                return 1
        else:
            path = Path(args.csv)
            part = path.with_name(path.name + ".part")
            try:
                with part.open("wb") as out:
                    n = export(conn, org, uuid.UUID(args.id), args.status, out)
                part.replace(path)
            finally:
                part.unlink(missing_ok=True)
    _err(f"exported {n} recipients to {'stdout' if args.csv == '-' else args.csv}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.supervise:  # the flow in a child process, started again if it dies with the campaign running
        from campaigns.sending.runner import supervise

        lost = supervise(_db(), uuid.UUID(args.id), _runner_starter(args.id))
        _err(f"campaign {args.id}: its runner was started again {lost} times" if lost else f"campaign {args.id}: done")
        return 0
    return _run_flow(args.id)


def _run_flow(campaign_id: str) -> int:
    from campaigns.sending.engine_process import start_engine_warm
    from flows.send_campaign import send_campaign

    start_engine_warm()  # now, while this process has one thread: the flow starts Prefect's
    state = send_campaign(uuid.UUID(campaign_id), return_state=True)
    _err(f"{state.name}: {state.message}")
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
    _db().dispose(close=False)
    sys.exit(_run_flow(campaign_id))


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.serve import main as serve_main

    _err(
        "serving send-campaign/default, ingest-statuses/default, campaign-scheduler/default, create-campaign/default "
        "and campaign-control/default (Ctrl-C to stop)"
    )
    serve_main(limit=args.limit)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from campaigns.infra.embedded import stop_services
    from campaigns.settings import get_settings

    home = get_settings().campaigns_home.resolve()
    homes = [home, *sorted(p for p in home.glob("*") if p.is_dir())] if args.all else [home]
    for h in homes:
        if stopped := stop_services(h):
            _err(f"{h}: stopped {', '.join(stopped)}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from campaigns.webhooks.ingest import ingest_pending

    r = ingest_pending(_db())
    _err(f"ingested {r.events} events, {r.statuses} statuses ({r.unmatched} not matched yet)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from campaigns.demo import run_demo

    return run_demo(args.contacts, latency_ms=args.latency_ms)


def cmd_sandbox_serve(args: argparse.Namespace) -> int:
    import secrets

    from sandbox import SandboxConfig, serve

    app_secret = args.app_secret or secrets.token_urlsafe(24)
    if not args.app_secret:  # never a constant: a number registered with it would let anyone sign its webhooks
        _err(f"signing webhooks with the app secret {app_secret} (give the number the same; --app-secret to choose)")
    config = SandboxConfig(
        latency_ms=args.latency_ms, mps_cap=args.mps_cap, webhook_url=args.webhook_url, app_secret=app_secret
    )
    _err(
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
    app = create_app(settings.database_url or "", KnownSecrets(loader=secrets_loader), settings.webhook_max_body_bytes)
    _err(
        f"receiving webhooks on http://{args.host}:{args.port}/webhooks/whatsapp (Meta) and "
        f"/webhooks/evolution/{{instance}} (Ctrl-C to stop)"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_api_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from campaigns.api import create_app

    _err(f"serving the HTTP API on http://{args.host}:{args.port}/api/v1 (start and resume need `campaigns serve`)")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_api_token(args: argparse.Namespace) -> int:
    from campaigns import api_tokens

    with _db().begin() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        token_id, token = api_tokens.issue(conn, org, args.role)
    print(token)
    _err(
        f"token {token_id} ({args.role}) for {args.org}: shown once, store it now; "
        f"`campaigns api revoke {token_id}` ends it"
    )
    return 0


def cmd_api_revoke(args: argparse.Namespace) -> int:
    from campaigns import api_tokens

    try:
        token_id = uuid.UUID(args.token_id)
    except ValueError:
        raise NotFound(f"Token not found: {args.token_id}") from None
    with _db().begin() as conn:
        if not api_tokens.revoke(conn, token_id):
            raise NotFound(f"No live token with id {token_id}")
    _err(f"token {token_id} revoked")
    return 0


# -- parser -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="campaigns", description="PyTake Campaigns: WhatsApp campaigns on Prefect")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(fn=cmd_db_upgrade, prefect=False)

    orgs = sub.add_parser("orgs", help="organizations").add_subparsers(dest="orgs_command", required=True)
    a = orgs.add_parser("add", help="add an organization; prints its id")
    a.add_argument("name")
    a.set_defaults(fn=cmd_orgs_add, prefect=False)

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
    _limit_arguments(a)
    a.set_defaults(fn=cmd_numbers_add, prefect=True)

    a = nums.add_parser("limits", help="change a number's rate and caps; prints the limits in force")
    a.add_argument("number_id")
    a.add_argument("--org", required=True)
    a.add_argument("--mps", dest="set_mps", type=int, help="messages per second")
    _limit_arguments(a)
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
    a.add_argument("--limit", type=int, default=8, help="flow runs at once in this process")
    a.set_defaults(fn=cmd_serve, prefect=True)

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
    a.set_defaults(fn=cmd_api_token, prefect=False)
    a = api.add_parser("revoke", help="refuse a token from now on")
    a.add_argument("token_id")
    a.set_defaults(fn=cmd_api_revoke, prefect=False)
    return p


_UNSET = object()


def _limit_arguments(a: argparse.ArgumentParser) -> None:
    for name in ("minute", "hour", "day"):
        a.add_argument(
            f"--per-{name}",
            type=_cap,
            default=_UNSET,
            metavar="N|none",
            help=f"at most N messages per UTC {name} (none: no cap)",
        )
    from campaigns.sending.ratelimit import PRESETS

    a.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="meta-conservative: 20/min, 100/h, 500/day (the seed's figures); none: no caps",
    )
    a.add_argument("--portfolio", metavar="ID|none", help="the business portfolio whose messaging limit it shares")


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
    _prefect_logging()
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
        _err(f"error: {exc.message}")
        for detail in exc.details:
            _err(f"  - {detail}")
        return 1
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:  # a path given on the command line
        _err(f"error: {exc.strerror}: {exc.filename}")
        return 2
    except DataError as exc:  # a value no check caught, refused by Postgres: the caller's, not a crash
        _err(f"error: a value was refused by the database: {str(exc.orig).splitlines()[0] if exc.orig else exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
