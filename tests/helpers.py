"""Builders for test data: organizations' numbers, contacts and campaigns, through the real code paths."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from campaigns.control import lifecycle, services, tenancy
from campaigns.control.models import CampaignCreate

APP_SECRET = "sandbox-app-secret"  # the sandbox signs with it; the test numbers and receivers know it


def add_sandbox_number(
    db: sa.Engine, org: uuid.UUID, sandbox: Any, mps: int = 1000, token: str = "tok", phone_number_id: str | None = None
) -> uuid.UUID:
    from blocks.numbers import add_number

    pnid = phone_number_id or str(uuid.uuid4().int)[:15]
    sandbox.set_token(pnid, token)
    with db.begin() as conn:
        return add_number(
            conn,
            org,
            provider="sandbox",
            phone_number_id=pnid,
            token=token,
            app_secret=APP_SECRET,
            verify_token="verify-me",
            api_base=sandbox.url,
            mps=mps,
        )


def add_contacts(db: sa.Engine, org: uuid.UUID, rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    """Insert contacts as the main app would (any phone, even invalid or repeated), in order."""
    now = datetime.now(UTC)
    ids = []
    with db.begin() as conn:
        for i, row in enumerate(rows):
            ids.append(
                conn.execute(
                    sa.text("""
                insert into contacts (organization_id, phone, name, tags, attributes, opted_out_at, last_inbound_at,
                                      in_conversation, created_at)
                values (:org, :phone, :name, :tags, cast(:attrs as jsonb), :opted, :inbound, :conv, :created)
                returning id
            """),
                    {
                        "org": org,
                        "phone": row["phone"],
                        "name": row.get("name"),
                        "tags": row.get("tags", []),
                        "attrs": json.dumps(row.get("attributes", {})),
                        "opted": now if row.get("opted_out") else None,
                        "inbound": now - timedelta(hours=row["inbound_hours_ago"])
                        if "inbound_hours_ago" in row
                        else None,
                        "conv": row.get("in_conversation", False),
                        "created": now + timedelta(microseconds=i),
                    },
                ).scalar_one()
            )
    return ids


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+55119{start + i:08d}" for i in range(n)]


def create_campaign(db: sa.Engine, org: uuid.UUID, number_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    body: dict[str, Any] = {
        "name": "Black Friday",
        "whatsapp_number_id": str(number_id),
        "message_type": "template",
        "message_content": {"template_name": "black_friday", "language": "pt_BR"},
        "template_variables": {"body": ["{{contact.name}}"]},
        "audience_type": "all_contacts",
        "messages_per_hour": None,
        "delay_between_messages_seconds": 0,
        "retry_base_delay": 10,
    }
    body.update(fields)
    with db.begin() as conn:
        return lifecycle.create(conn, org, CampaignCreate.model_validate(body))


def start_campaign(db: sa.Engine, org: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    """Start as the faces do: the number's credentials from its Prefect block, the runs in Prefect."""
    from blocks.whatsapp import fresh_credentials
    from deployments.launch import PrefectRuns

    return services.start_campaign(db, org, campaign_id, credentials=fresh_credentials, runs=PrefectRuns())


def recipients(db: sa.Engine, campaign_id: uuid.UUID) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text("select * from campaign_recipients where campaign_id = :c order by id"), {"c": campaign_id}
        )
        return [dict(r._mapping) for r in rows]


def campaign_row(db: sa.Engine, campaign_id: uuid.UUID) -> dict[str, Any]:
    with db.connect() as conn:
        return lifecycle.get_any_org(conn, campaign_id)


def sent_counts(sandbox: Any) -> dict[str, int]:
    """How many times the sandbox accepted each of our recipient ids."""
    counts: dict[str, int] = {}
    for m in sandbox.messages():
        key = m["biz_opaque_callback_data"]
        counts[key] = counts.get(key, 0) + 1
    return counts


def wait_for(
    predicate: Any, timeout: float = 30.0, interval: float = 0.05, message: str = "condition not met in time"
) -> None:
    wait_for_value(predicate, timeout, interval, message)


def wait_for_value(
    get: Any, timeout: float = 30.0, interval: float = 0.05, message: str = "condition not met in time"
) -> Any:
    """The first truthy value `get()` returns, polling every `interval`; AssertionError(message) after `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := get()):
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(interval)
    return value


def shrink_retry_delay(db: sa.Engine, campaign_id: uuid.UUID, seconds: int = 1) -> None:
    """Tests shrink the retry base delay below the API's 10 s minimum, never the retry logic itself."""
    with db.begin() as conn:
        conn.execute(
            sa.text("update campaigns set retry_base_delay = :s where id = :c"), {"s": seconds, "c": campaign_id}
        )


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `campaigns` command in its own process, as an operator or script runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "campaigns.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=180,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"campaigns {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def new_org(db: sa.Engine, prefix: str = "org") -> uuid.UUID:
    with db.begin() as conn:
        return tenancy.add_org(conn, f"{prefix}-{uuid.uuid4().hex[:10]}")


def phone_number_id(db: sa.Engine, number_id: uuid.UUID) -> str:
    with db.connect() as conn:
        return conn.execute(
            sa.text("select phone_number_id from whatsapp_numbers where id = :n"), {"n": number_id}
        ).scalar_one()


def signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    """The X-Hub-Signature-256 header Meta would send with `body`."""
    from sandbox import sign_body

    return {"X-Hub-Signature-256": sign_body(body, secret)}


def post_signed(url: str, payload: dict[str, Any], secret: str = APP_SECRET) -> int:
    import httpx

    body = json.dumps(payload).encode()
    return httpx.post(url, content=body, headers=signed(body, secret)).status_code


def meta_change(pnid: str, field: str = "messages", **value: Any) -> dict[str, Any]:
    """A WhatsApp Business Account notification with one change of `field` for the number `pnid`."""
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": pnid}, **value}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": field, "value": value}]}],
    }


@contextlib.contextmanager
def webhook_receiver(secrets: Any) -> Iterator[str]:
    """The real receiver on a free port, checking against `secrets` (a KnownSecrets); yields its base URL."""
    from campaigns.infra.asgi_thread import ThreadedServer
    from campaigns.webhook_app import create_app

    server = ThreadedServer(create_app(os.environ["DATABASE_URL"], secrets)).start()
    try:
        yield server.url
    finally:
        server.stop()


def run_campaign(campaign_id: uuid.UUID) -> dict[str, Any]:
    """The send-campaign flow in this process, as `campaigns run` does. What it returned, with the campaign's
    status and the run's final state as an operator sees it in the Prefect UI (`state`, `state_name`,
    `message`)."""
    from campaigns.store.db import get_engine
    from flows.send_campaign import send_campaign

    state = send_campaign(campaign_id, return_state=True)
    data = (state.result() if state.is_completed() else None) or {}
    with_status = {"status": campaign_row(get_engine(), campaign_id)["status"]} if "status" not in data else {}
    return {
        **data,
        **with_status,
        "state": state.type.value,
        "state_name": state.name,
        "message": state.message,
        "flow_run_id": state.state_details.flow_run_id,
    }


def run_logs(flow_run_id: uuid.UUID) -> str:
    """A flow run's log as the Prefect UI shows it, one message a line."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return "\n".join(entry.message for entry in logs)


def org_name(db: sa.Engine, org: uuid.UUID) -> str:
    with db.connect() as conn:
        return conn.execute(sa.text("select name from organizations where id = :o"), {"o": org}).scalar_one()


def prefect_run(flow_run_id: str) -> Any:
    """The flow run as Prefect has it (state, scheduled time, parameters, deployment)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(flow_run_id))


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Environment variables for the block, and for the processes started in it; then as they were. The settings
    are read from the environment once (get_settings is cached): the cache is cleared on the way in and out."""
    from campaigns.settings import get_settings

    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


@contextlib.contextmanager
def use_settings(**overrides: Any) -> Iterator[Any]:
    """The process's settings with `overrides` (campaigns.settings.Settings field names: a typo is refused) for
    the block; yields them. Something that read a setting once (the send engine's client) must be started again
    inside the block to see it."""
    from campaigns.settings import Settings, get_settings

    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise TypeError(f"not a setting: {', '.join(unknown)}")
    with environ(**{name.upper(): str(value) for name, value in overrides.items()}):
        yield get_settings()


_api_clients: list[Any] = []


def api_client(base_url: str, token: str | None = None) -> Any:
    """An httpx client for the API, closed when the test ends (conftest): a pool left open is closed by the
    garbage collector later, in whichever test it runs, with a ResourceWarning there."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    _api_clients.append(httpx.Client(base_url=base_url, headers=headers, timeout=30))
    return _api_clients[-1]


def close_api_clients() -> None:
    while _api_clients:
        _api_clients.pop().close()
