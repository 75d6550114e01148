"""Shared set-up for benchmarks: services (embedded or from the environment) and a fresh database."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def fresh_services(db_name: str = "campaigns_bench") -> None:
    """Bootstrap services and point DATABASE_URL at a new, migrated database."""
    os.environ.setdefault("CAMPAIGNS_HOME", str(ROOT / ".campaigns" / "bench"))
    os.environ.setdefault("CAMPAIGNS_PREFECT_PORT", "4279")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from campaigns.infra.embedded import bootstrap
    from campaigns.settings import get_settings
    from campaigns.store.db import libpq_url, upgrade

    settings = bootstrap(prefect=True)
    base = libpq_url(settings.database_url or "")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"drop database if exists {db_name} with (force)")
        conn.execute(f"create database {db_name}")
    if "?" in base:
        head, query = base.split("?", 1)
        url = head.rsplit("/", 1)[0] + f"/{db_name}?{query}"
    else:
        url = base.rsplit("/", 1)[0] + f"/{db_name}"
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    upgrade(url)


def new_org(name: str = "bench") -> uuid.UUID:
    from campaigns.control import tenancy
    from campaigns.store.db import get_engine

    with get_engine().begin() as conn:
        return tenancy.add_org(conn, f"{name}-{uuid.uuid4().hex[:8]}")


def bulk_contacts(org: uuid.UUID, n: int) -> None:
    """n valid contacts, written with one set-based INSERT."""
    import sqlalchemy as sa

    from campaigns.store.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(
            sa.text("""
            insert into contacts (organization_id, phone, name, created_at)
            select :org, '+55' || (11900000000 + g)::text, 'Contato ' || g, now() + g * interval '1 microsecond'
            from generate_series(1, :n) g
        """),
            {"org": org, "n": n},
        )


def sandbox_campaign(org: uuid.UUID, api_base: str, mps: int, phone_number_id: str, app_secret: str = "s") -> uuid.UUID:
    """A sandbox number and a template campaign to every contact of `org`, paced only by the number."""
    return template_campaign(org, sandbox_number(org, api_base, mps, phone_number_id, app_secret))


def sandbox_number(org: uuid.UUID, api_base: str, mps: int, phone_number_id: str, app_secret: str = "s") -> uuid.UUID:
    from blocks.numbers import add_number
    from campaigns.store.db import get_engine

    with get_engine().begin() as conn:
        return add_number(
            conn,
            org,
            provider="sandbox",
            phone_number_id=phone_number_id,
            token="t",
            app_secret=app_secret,
            verify_token="v",
            api_base=api_base,
            mps=mps,
        )


def template_campaign(
    org: uuid.UUID, number: uuid.UUID, messages_per_hour: int | None = None, delay_seconds: int = 0
) -> uuid.UUID:
    """A template campaign to every contact of `org` on `number` (by default paced only by the number)."""
    from campaigns.control import lifecycle
    from campaigns.control.models import CampaignCreate
    from campaigns.store.db import get_engine

    with get_engine().begin() as conn:
        return lifecycle.create(
            conn,
            org,
            CampaignCreate(
                name="bench",
                whatsapp_number_id=number,
                message_type="template",
                message_content={"template_name": "bench", "language": "pt_BR"},
                template_variables={"body": ["{{contact.name}}"]},
                messages_per_hour=messages_per_hour,
                delay_between_messages_seconds=delay_seconds,
            ),
        )


def serve_and_receiver(secret: str) -> tuple[Any, Any]:
    """`campaigns serve` in its own process group, and the webhook receiver (a thread of this process) that
    knows the app secret `secret`, started."""
    import subprocess
    import sys

    from campaigns.infra.asgi_thread import ThreadedServer
    from campaigns.webhook_app import create_app
    from campaigns.webhooks.receiver import KnownSecrets

    serve = subprocess.Popen(
        [sys.executable, "-m", "campaigns.cli", "serve"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    receiver = ThreadedServer(create_app(os.environ["DATABASE_URL"], KnownSecrets(app_secrets=[secret.encode()])))
    receiver.start()
    return serve, receiver


class StatementTimer:
    """Time of each statement an engine runs (SQLAlchemy cursor events), its text cut to `width`."""

    def __init__(self, engine: object, width: int = 90) -> None:
        import sqlalchemy as sa

        self.width = width
        self.times: list[tuple[str, float]] = []
        sa.event.listen(engine, "before_cursor_execute", self.before)
        sa.event.listen(engine, "after_cursor_execute", self.after)

    def before(self, conn, cursor, statement, *_):
        conn.info["t0"] = time.perf_counter()

    def after(self, conn, cursor, statement, *_):
        self.times.append((" ".join(statement.split())[: self.width], time.perf_counter() - conn.info.pop("t0")))
