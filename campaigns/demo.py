"""`campaigns demo`: a whole campaign on embedded defaults, against the built-in sandbox.

It imports N generated contacts (with a few bad rows, opt-outs and a duplicate, so every path shows),
creates a template campaign, runs the real send-campaign flow on the local Prefect server, lets the
sandbox's signed status webhooks flow through the real receiver, ingests them and prints the stats.
"""

from __future__ import annotations

import json
import random
import secrets
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from campaigns.audience.contacts import import_csv
from campaigns.cli.common import ProgressLine
from campaigns.control import lifecycle, tenancy
from campaigns.control.models import CampaignCreate
from campaigns.control.services import progress_of, start_campaign, stats_of
from campaigns.infra.asgi_thread import ThreadedServer
from campaigns.reporting.stats import progress_line
from campaigns.settings import get_settings
from campaigns.store.db import get_engine, upgrade
from campaigns.webhook_app import create_app
from campaigns.webhooks.ingest import ingest_pending
from campaigns.webhooks.receiver import KnownSecrets

CAP = 1_000  # the demo number's throughput (msg/s), which the sandbox enforces as Meta does: 130429 past it
if TYPE_CHECKING:
    from sandbox import SandboxProcess

NAMES = ["Ana", "Bruno", "Carla", "Diego", "Elisa", "Fábio", "Gabi", "Heitor", "Iara", "João"]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_contacts_csv(path: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    lines = ["phone,name,tags,opted_out,last_inbound_at,city"]
    for i in range(n):
        phone = f"+55 11 9{i:08d}"
        if i % 200 == 199:
            phone = f"12{i}"  # not a phone number: reported with its line
        opted = "true" if i % 50 == 7 else "false"
        lines.append(f"{phone},{rng.choice(NAMES)} {i},{'vip' if i % 10 == 0 else 'geral'},{opted},,São Paulo")
    lines.append(lines[1])  # the same contact twice: reported as a duplicate line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _progress_bar(org: uuid.UUID, campaign_id: uuid.UUID, stop: threading.Event) -> None:
    db = get_engine()
    line = ProgressLine(prefix="  ")
    while not stop.is_set():
        with db.connect() as conn:
            line.show(progress_line(progress_of(conn, org, campaign_id)))
        stop.wait(0.5)
    line.end()


def _rate_line(sent: int, elapsed: float, sandbox: SandboxProcess) -> str:
    """What a newcomer wants from a first campaign: the rate it held against which cap, and whether the
    provider ever said too fast. Sustained is first to last message as the provider accepted them (what the
    cap limits); end to end adds the run's start, the audience and the last answers."""
    accepted = sorted(m["accepted_at"] for m in sandbox.messages())
    span = accepted[-1] - accepted[0] if len(accepted) > 1 else 0.0
    sustained = (len(accepted) - 1) / span if span else 0.0
    throttled = sandbox.stats()["throttled_130429"]
    return (
        f"sent {sent:,} messages in {elapsed:.1f} s: {sustained:,.0f} msg/s sustained against the number's cap of "
        f"{CAP:,} msg/s ({sustained / CAP:.2f} of it), {sent / elapsed if elapsed else 0:,.0f} msg/s end to end; "
        f"the provider answered 130429 (too fast) {throttled} times"
    )


def run_demo(n_contacts: int = 10_000, latency_ms: int = 100) -> int:
    from blocks.numbers import add_number
    from blocks.whatsapp import fresh_credentials
    from deployments.launch import PrefectRuns
    from flows.send_campaign import send_campaign

    # started here only: the product never imports the sandbox. In a process of its own, as Meta is: in this
    # one, a stall of the flow beside it would bunch its decisions and its 1-s window would answer 130429 to a
    # pace the engine kept (sandbox/process.py).
    from sandbox import SandboxConfig, SandboxProcess
    from tasks.artifacts import refresh_summaries

    settings = get_settings()
    # Its own secret each run: a constant one, left on a number in a shared database, would let anyone sign
    # webhooks for it (and the receiver refuses the well-known ones anyway).
    app_secret = secrets.token_urlsafe(24)
    upgrade()
    db = get_engine()
    home = settings.campaigns_home.resolve() / "demo"
    home.mkdir(parents=True, exist_ok=True)

    receiver = ThreadedServer(create_app(settings.database_url or "", KnownSecrets(app_secrets=[app_secret.encode()])))
    receiver.start()
    sandbox = SandboxProcess(
        SandboxConfig(
            latency_ms=latency_ms,
            latency_jitter_ms=latency_ms / 5,
            mps_cap=CAP,
            webhook_url=receiver.url + "/webhooks/whatsapp",
            app_secret=app_secret,
            read_rate=0.6,
            reply_rate=0.05,
            templates={"black_friday": "Olá {{1}}, aproveite nossa promoção de Black Friday!"},
        )
    ).start()
    _say(
        f"sandbox provider at {sandbox.url} (latency {latency_ms} ms, cap {CAP:,} msg/s); "
        f"webhook receiver at {receiver.url}"
    )
    try:
        with db.begin() as conn:
            # An organization per run: a second demo must not send to the first one's contacts too.
            org = tenancy.add_org(conn, f"demo {time.strftime('%Y-%m-%d %H:%M:%S')}")
            number = add_number(
                conn,
                org,
                provider="sandbox",
                phone_number_id="100000000000042",
                token="demo-token",
                app_secret=app_secret,
                verify_token=secrets.token_urlsafe(16),
                api_base=sandbox.url,
                mps=CAP,
            )
        csv_path = home / "contacts.csv"
        write_contacts_csv(csv_path, n_contacts)
        with db.begin() as conn:
            report = import_csv(conn, org, csv_path, settings.default_country_code)
        _say(f"contacts: {report.imported} imported, {len(report.errors)} rows rejected")
        for line, reason in report.errors[:3]:
            _say(f"  line {line}: {reason}")
        if len(report.errors) > 3:
            _say(f"  … and {len(report.errors) - 3} more")
        body = CampaignCreate(
            name=f"Black Friday demo {time.strftime('%H:%M:%S')}",
            whatsapp_number_id=number,
            message_type="template",
            message_content={"template_name": "black_friday", "language": "pt_BR"},
            template_variables={"body": ["{{contact.first_name}}"]},
            audience_type="all_contacts",
            messages_per_hour=None,
            delay_between_messages_seconds=0,
        )
        with db.begin() as conn:
            campaign_id = lifecycle.create(conn, org, body)
        started = start_campaign(db, org, campaign_id, credentials=fresh_credentials, runs=PrefectRuns())
        _say(f"campaign {campaign_id} started: audience of {started['total_recipients']} contacts")
        stop = threading.Event()
        bar = threading.Thread(target=_progress_bar, args=(org, campaign_id, stop), daemon=True)
        t0 = time.monotonic()
        bar.start()
        try:
            state = send_campaign(campaign_id, return_state=True)
        finally:
            stop.set()
            bar.join()
        elapsed = time.monotonic() - t0
        _say(f"its run in Prefect: {state.name}: {state.message}")
        sandbox.drain_webhooks(timeout=60)
        ingest_pending(db)
        refresh_summaries([campaign_id])  # the run's summary in the UI shows these statuses too, as ingestion does
        with db.connect() as conn:
            stats = stats_of(conn, org, campaign_id)
        _say(_rate_line(stats["messages_sent"], elapsed, sandbox))
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        _say(f"\nPrefect UI: {(get_settings().prefect_api_url or '').removesuffix('/api')}  (flow runs, artifacts)")
        _say(f"try: .venv/bin/campaigns stats {campaign_id}   |   .venv/bin/campaigns recipients {campaign_id}")
        return 0
    finally:
        sandbox.stop()
        receiver.stop()
