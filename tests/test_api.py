"""The HTTP API over real HTTP (uvicorn in a thread), real Postgres, the real flow and the sandbox."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from campaigns import api_tokens
from campaigns.api import PrefectLauncher, create_app
from campaigns.control import tenancy
from campaigns.control.models import SEED_EXAMPLE
from campaigns.infra.asgi_thread import ThreadedServer
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    api_client,
    campaign_row,
    cli,
    new_org,
    phones,
    use_settings,
    wait_for,
)

SEED_BODY = {k: v for k, v in SEED_EXAMPLE.items() if k != "whatsapp_number_id"}  # each test gives its number
FAST = {"messages_per_hour": None, "delay_between_messages_seconds": 0}


class Recorder:
    """A launcher that only remembers what it was asked to launch."""

    def __init__(self) -> None:
        self.launched: list[uuid.UUID] = []

    def __call__(self, campaign_id: uuid.UUID) -> str:
        self.launched.append(campaign_id)
        return f"recorded-{len(self.launched)}"


class FlowInThread(Recorder):
    """A launcher that runs the real send-campaign flow in a thread, as `campaigns serve` would."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def __call__(self, campaign_id: uuid.UUID) -> str:
        from flows.send_campaign import send_campaign

        thread = threading.Thread(target=send_campaign, args=(campaign_id,), daemon=True)
        thread.start()
        self.threads.append(thread)
        return super().__call__(campaign_id)


@pytest.fixture
def serve(db) -> Iterator[Callable[..., str]]:
    """Start the API app with a launcher; returns its base URL."""
    servers: list[ThreadedServer] = []

    def start(launch: Callable[[uuid.UUID], str] | None = None) -> str:
        servers.append(ThreadedServer(create_app(launch or Recorder(), db=db)).start())
        return servers[-1].url

    yield start
    for server in servers:
        server.stop()


def client(url: str, db: Any, org: uuid.UUID | None, role: str = "org_admin") -> httpx.Client:
    if org is None:
        return api_client(url + "/api/v1")
    with db.begin() as conn:
        return api_client(url + "/api/v1", api_tokens.issue(conn, org, role)[1])


def create(http: httpx.Client, number: uuid.UUID, **fields: Any) -> str:
    r = http.post("/campaigns", json={**SEED_BODY, "whatsapp_number_id": str(number), **fields})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_create_names_each_wrong_field_then_list_update_and_delete(db, org, sandbox, serve):
    url = serve()
    admin, agent = client(url, db, org), client(url, db, org, "agent")
    number = add_sandbox_number(db, org, sandbox)

    bad = admin.post(
        "/campaigns",
        json={
            **SEED_BODY,
            "whatsapp_number_id": str(number),
            "retry_max_attempts": 99,
            "messages_per_hour": 0,
            "colour": "red",
        },
    )
    assert bad.status_code == 422
    fields = [e.split(":")[0] for e in bad.json()["errors"]]
    assert sorted(fields) == ["colour", "messages_per_hour", "retry_max_attempts"]
    assert "retry_max_attempts" in bad.json()["detail"]
    no_text = admin.post("/campaigns", json={**SEED_BODY, "whatsapp_number_id": str(number), "message_content": {}})
    assert no_text.status_code == 422 and "message_content.text" in no_text.json()["detail"]
    assert admin.post("/campaigns", content=b"{nope").json()["detail"] == "The request body is not valid JSON"
    foreign = add_sandbox_number(db, new_org(db), sandbox)
    r = admin.post("/campaigns", json={**SEED_BODY, "whatsapp_number_id": str(foreign)})
    assert r.status_code == 422 and r.json()["detail"].startswith("whatsapp_number_id")

    # The seed writes POST /api/v1/campaigns/ ; its defaults come back.
    r = agent.post("/campaigns/", json={**SEED_BODY, "whatsapp_number_id": str(number)})
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["status"], created["total_recipients"], created["retry_max_delay"]) == ("draft", 0, 3600)
    assert created["respect_opt_out"] is True and created["skip_active_conversations"] is False
    cid = created["id"]

    listed = admin.get("/campaigns", params={"status": "draft"}).json()
    assert listed["total"] == 1 and [c["id"] for c in listed["campaigns"]] == [cid]
    assert admin.get("/campaigns", params={"status": "running"}).json()["total"] == 0
    assert admin.get("/campaigns", params={"status": "bogus"}).status_code == 422
    assert admin.get("/campaigns", params={"limit": "x"}).json()["detail"] == "limit must be a whole number (got 'x')"

    r = agent.patch(f"/campaigns/{cid}", json={"name": "Black Friday 2025", "messages_per_hour": 500})
    assert r.status_code == 200 and (r.json()["name"], r.json()["messages_per_hour"]) == ("Black Friday 2025", 500)
    r = agent.patch(f"/campaigns/{cid}", json={"whatsapp_number_id": str(foreign)})
    assert r.status_code == 422 and r.json()["detail"].startswith("whatsapp_number_id")
    assert campaign_row(db, uuid.UUID(cid))["whatsapp_number_id"] == number  # rolled back
    r = agent.patch(f"/campaigns/{cid}", json={"status": "running", "retry_base_delay": 1})
    assert r.status_code == 422 and sorted(e.split(":")[0] for e in r.json()["errors"]) == [
        "retry_base_delay",
        "status",
    ]

    assert agent.delete(f"/campaigns/{cid}").status_code == 403
    r = admin.delete(f"/campaigns/{cid}")
    assert r.status_code == 200 and (r.json()["status"], r.json()["previous_status"]) == ("cancelled", "draft")
    again = admin.delete(f"/campaigns/{cid}")
    assert again.status_code == 409 and again.json()["detail"].startswith("Cannot delete a cancelled campaign")


@pytest.mark.flow
def test_start_runs_the_flow_then_stats_progress_and_recipients_answer_in_the_seed_shape(db, org, sandbox, serve):
    launcher = FlowInThread()
    http = client(serve(launcher), db, org, "agent")
    number = add_sandbox_number(db, org, sandbox)
    # Free-form text goes only to contacts inside the 24 h window.
    add_contacts(db, org, [{"phone": p, "name": f"Ana {i}", "inbound_hours_ago": 1} for i, p in enumerate(phones(20))])
    cid = create(http, number, **FAST)

    r = http.post(f"/campaigns/{cid}/start")
    assert r.status_code == 200, r.text
    started = r.json()
    assert {"campaign_id", "status", "started_at", "total_recipients", "message"} <= started.keys()
    assert (started["campaign_id"], started["status"], started["total_recipients"]) == (cid, "running", 20)
    assert started["message"] == "Campaign started. Flow run ID: recorded-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", started["started_at"])  # the seed's form

    wait_for(lambda: http.get(f"/campaigns/{cid}/progress").json()["current_status"] == "completed", timeout=60)
    launcher.threads[0].join(timeout=30)
    progress = http.get(f"/campaigns/{cid}/progress").json()
    assert progress == {
        **progress,
        "campaign_id": cid,
        "progress_percentage": 100.0,
        "messages_processed": 20,
        "messages_pending": 0,
        "estimated_remaining_time": "00:00:00",
    }
    assert progress["last_update"].endswith("Z")
    stats = http.get(f"/campaigns/{cid}/stats").json()
    seed_keys = {
        "total_recipients",
        "messages_sent",
        "messages_delivered",
        "messages_read",
        "messages_failed",
        "messages_pending",
        "delivery_rate",
        "read_rate",
        "reply_rate",
        "error_count",
        "last_error_message",
    }
    assert seed_keys <= stats.keys()
    assert (stats["total_recipients"], stats["messages_sent"], stats["messages_failed"]) == (20, 20, 0)
    campaign = http.get(f"/campaigns/{cid}").json()
    assert seed_keys <= campaign.keys() and campaign["status"] == "completed"
    assert campaign["completed_at"].endswith("Z")
    assert uuid.UUID(campaign["flow_run_id"])  # the run that sent it records itself (the launcher said recorded-1)
    assert http.get(f"/campaigns/{cid}/retry-stats").status_code == 200

    first = http.get(f"/campaigns/{cid}/recipients", params={"page_size": 15}).json()
    assert first["total"] == 20 and len(first["recipients"]) == 15 and first["next_cursor"]
    rest = http.get(f"/campaigns/{cid}/recipients", params={"page_size": 15, "after": first["next_cursor"]}).json()
    assert len(rest["recipients"]) == 5 and rest["next_cursor"] is None
    assert not first["recipients"].keys() & rest["recipients"].keys()
    one = next(iter(first["recipients"].values()))
    assert one["status"] in ("sent", "delivered", "read") and one["attempts"][0]["attempt"] == 0
    assert http.get(f"/campaigns/{cid}/recipients", params={"status": "nope"}).status_code == 422

    with http.stream("GET", f"/campaigns/{cid}/recipients.csv") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert f"campaign-{cid}-recipients.csv" in r.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(r.read().decode())))
    assert len(rows) == 20 and {row["contact_id"] for row in rows} == {*first["recipients"], *rest["recipients"]}
    assert http.get(f"/campaigns/{cid}/recipients.csv", params={"status": "failed"}).text.count("\n") == 1
    bad = http.get(f"/campaigns/{cid}/recipients.csv", params={"status": "nope"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("status must be one of")


def test_a_client_leaving_mid_export_stops_the_copy(db, org, sandbox, serve, caplog):
    http = client(serve(), db, org, "viewer")
    cid = create(client(serve(), db, org), add_sandbox_number(db, org, sandbox))
    with db.begin() as conn:  # 20 MB of CSV, more than the sockets buffer, written directly to be quick
        conn.execute(
            sa.text("""
            insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, error_message)
            select :c, :o, gen_random_uuid(), '+5511' || g, 'failed', repeat('x', 2000)
            from generate_series(1, 10000) g"""),
            {"c": cid, "o": org},
        )
    caplog.set_level(logging.INFO, logger="campaigns.api")
    with http.stream("GET", f"/campaigns/{cid}/recipients.csv") as r:
        assert r.status_code == 200 and next(r.iter_raw())
    wait_for(lambda: not any(t.name == f"csv-{cid}" for t in threading.enumerate()), timeout=30)
    assert f"recipients export of campaign {cid} stopped: the client went away" in caplog.text


def test_pause_resume_cancel_and_schedule_answer_their_status_codes(db, org, sandbox, serve):
    launcher = Recorder()
    url = serve(launcher)
    http, admin = client(url, db, org, "agent"), client(url, db, org)
    number = add_sandbox_number(db, org, sandbox)
    empty = create(http, number)
    r = http.post(f"/campaigns/{empty}/start")
    assert r.status_code == 422 and r.json()["errors"] == ["audience: the audience has no contacts"]
    add_contacts(db, org, [{"phone": p, "inbound_hours_ago": 1} for p in phones(3)])  # text: inside the 24 h window
    cid = create(http, number)

    assert http.post(f"/campaigns/{cid}/start").json()["status"] == "running"
    r = http.post(f"/campaigns/{cid}/start")
    assert r.status_code == 409 and r.json()["detail"] == "Cannot start a running campaign"
    r = http.post(f"/campaigns/{cid}/pause")
    assert r.status_code == 200 and r.json() == {"campaign_id": cid, "status": "paused", "previous_status": "running"}
    r = http.post(f"/campaigns/{cid}/pause")
    assert r.status_code == 409 and r.json() == {"detail": "Cannot pause a paused campaign", "errors": []}
    r = http.post(f"/campaigns/{cid}/resume")
    assert r.status_code == 200 and r.json()["status"] == "running" and r.json()["flow_run_id"] == "recorded-2"
    assert launcher.launched == [uuid.UUID(cid)] * 2
    r = http.patch(f"/campaigns/{cid}", json={"name": "x"})
    assert r.status_code == 409 and r.json()["detail"] == "Cannot edit running campaign"  # the seed's message
    refused = http.post(f"/campaigns/{cid}/cancel")  # irreversible, more than DELETE does: org_admin only
    assert refused.status_code == 403 and "org_admin" in refused.json()["detail"]
    assert admin.post(f"/campaigns/{cid}/cancel").json()["status"] == "cancelled"
    assert http.post(f"/campaigns/{cid}/resume").json()["detail"] == "Cannot resume a cancelled campaign"
    assert admin.post(f"/campaigns/{cid}/cancel").status_code == 409
    assert len(launcher.launched) == 2
    r = http.post(f"/campaigns/{cid}/retry-failed", json={"codes": "131026"})
    assert r.status_code == 422 and r.json()["detail"].startswith("codes:")
    r = http.post(f"/campaigns/{cid}/retry-failed")
    assert r.status_code == 409 and r.json()["detail"] == "Cannot retry the failures of a cancelled campaign"

    later = create(http, number)
    r = http.post(f"/campaigns/{later}/schedule")  # no body: the scheduled_at it was created with, if any
    assert r.status_code == 422 and r.json()["detail"].startswith("scheduled_at: give the time")
    r = http.post(f"/campaigns/{later}/schedule", json={"scheduled_at": "2031-12-01T09:00:00"})
    assert r.status_code == 422 and "time zone" in r.json()["detail"]
    r = http.post(f"/campaigns/{later}/schedule", json={"scheduled_at": "2031-12-01T09:00:00-03:00"})
    assert r.status_code == 200 and r.json()["status"] == "scheduled"
    assert r.json()["scheduled_at"] == "2031-12-01T12:00:00Z"
    # Held before its time, it goes back to scheduled on resume: its start still passes the checklist.
    assert http.post(f"/campaigns/{later}/pause").json()["status"] == "paused"
    r = http.post(f"/campaigns/{later}/resume")
    assert r.status_code == 200 and r.json()["status"] == "scheduled" and "flow_run_id" not in r.json()
    assert len(launcher.launched) == 2 and http.get(f"/campaigns/{later}").json()["started_at"] is None
    assert http.post(f"/campaigns/{later}/schedule", json={"at": "soon"}).json()["errors"][0].startswith("at:")
    missing = http.post(f"/campaigns/{uuid.uuid4()}/pause")
    assert missing.status_code == 404 and missing.json()["detail"] == "Campaign not found"
    assert http.get("/campaigns/not-a-uuid").json()["detail"] == "Campaign not found"


def test_tokens_scope_every_request_to_their_organization_and_roles_are_enforced(db, org, sandbox, serve):
    url = serve()
    admin = client(url, db, org)
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "inbound_hours_ago": 1} for p in phones(2)])  # text: inside the 24 h window
    cid = create(admin, number)

    other = client(url, db, new_org(db))
    for method, path in [
        ("GET", ""),
        ("GET", "/stats"),
        ("GET", "/progress"),
        ("GET", "/retry-stats"),
        ("GET", "/recipients"),
        ("GET", "/recipients.csv"),
        ("POST", "/start"),
        ("POST", "/pause"),
        ("POST", "/cancel"),
        ("DELETE", ""),
    ]:
        r = other.request(method, f"/campaigns/{cid}{path}")
        assert (r.status_code, r.json()["detail"]) == (404, "Campaign not found"), (method, path)
    assert other.patch(f"/campaigns/{cid}", json={"name": "mine"}).status_code == 404
    assert other.get("/campaigns").json()["total"] == 0
    assert other.get(f"/numbers/{number}/limits").json()["detail"] == "WhatsApp number not found"
    assert campaign_row(db, uuid.UUID(cid))["status"] == "draft"

    nobody = client(url, db, None)
    r = nobody.get("/campaigns")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert nobody.get("/campaigns", headers={"Authorization": "Bearer pytk_guess"}).status_code == 401
    assert nobody.get("/campaigns", headers={"Authorization": "Basic dTpw"}).status_code == 401

    viewer = client(url, db, org, "viewer")
    assert viewer.get(f"/campaigns/{cid}").status_code == 200
    assert viewer.get(f"/campaigns/{cid}/recipients.csv").status_code == 200
    r = viewer.post(f"/campaigns/{cid}/start")
    assert r.status_code == 403 and "org_admin or agent" in r.json()["detail"]
    assert viewer.post("/campaigns", json={**SEED_BODY, "whatsapp_number_id": str(number)}).status_code == 403
    assert viewer.put(f"/numbers/{number}/limits", json={"per_day": 10}).status_code == 403
    assert client(url, db, org, "agent").put(f"/numbers/{number}/limits", json={"per_day": 10}).status_code == 403
    assert campaign_row(db, uuid.UUID(cid))["status"] == "draft"

    with db.begin() as conn:
        token_id, token = api_tokens.issue(conn, org, "org_admin")
    revoked = api_client(url + "/api/v1", token)
    assert revoked.get("/campaigns").status_code == 200
    with db.begin() as conn:
        assert api_tokens.revoke(conn, token_id)
    assert revoked.get("/campaigns").json()["detail"] == "Invalid, revoked or expired token"


def test_number_limits_round_trip_with_the_preset(db, org, sandbox, serve):
    url = serve()
    http = client(url, db, org)
    number = add_sandbox_number(db, org, sandbox, mps=80)
    path = f"/numbers/{number}/limits"
    none = {
        "mps": 80,
        "per_minute": None,
        "per_hour": None,
        "per_day": None,
        "portfolio_id": None,
        "portfolio_limit": None,
    }
    assert http.get(path).json() == none
    assert client(url, db, org, "viewer").get(path).json() == none

    r = http.put(path, json={"preset": "meta-conservative"})
    assert r.status_code == 200 and r.json() == {**none, "per_minute": 20, "per_hour": 100, "per_day": 500}
    assert http.get(path).json() == r.json()
    r = http.put(path, json={"per_day": None, "mps": 1000})
    assert r.json() == {**none, "mps": 1000, "per_minute": 20, "per_hour": 100}
    with db.begin() as conn:
        portfolio = tenancy.add_portfolio(conn, org, "main", 2000)
    r = http.put(path, json={"preset": "none", "per_minute": 30, "portfolio_id": str(portfolio)})
    assert r.json() == {**none, "mps": 1000, "per_minute": 30, "portfolio_id": str(portfolio), "portfolio_limit": 2000}

    assert http.put(path, json={"per_hour": 0}).json()["detail"].startswith("per_hour:")
    assert http.put(path, json={"mps": "fast"}).json()["errors"][0].startswith("mps:")
    assert http.put(path, json={"preset": "reckless"}).json()["errors"][0].startswith("preset:")
    r = http.put(path, json={"portfolio_id": str(uuid.uuid4())})
    assert r.status_code == 422 and r.json()["detail"].startswith("portfolio_id:")
    assert http.get(f"/numbers/{uuid.uuid4()}/limits").status_code == 404


def test_start_answers_503_and_changes_nothing_when_nothing_serves_the_send_deployment(db, org, sandbox, serve):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "inbound_hours_ago": 1} for p in phones(2)])  # text: inside the 24 h window
    http = client(serve(PrefectLauncher(f"send-campaign/missing-{uuid.uuid4().hex[:8]}")), db, org)
    cid = create(http, number)
    r = http.post(f"/campaigns/{cid}/start")
    assert (
        r.status_code == 503
        and "`campaigns serve` (or a worker of the `campaigns` work pool, queue `campaigns`) must be running"
        in r.json()["detail"]
    )
    assert campaign_row(db, uuid.UUID(cid))["status"] == "draft"

    def broken(campaign_id: uuid.UUID) -> str:
        raise ConnectionError("Prefect went away")

    http = client(serve(broken), db, org)
    r = http.post(f"/campaigns/{cid}/start")
    assert r.status_code == 503 and r.json()["errors"] == ["ConnectionError: Prefect went away"]
    row = campaign_row(db, uuid.UUID(cid))  # not left "running" with nobody sending
    assert (row["status"], row["paused_reason"]) == ("paused", "launch_failed")


def test_start_answers_503_soon_after_serve_stops_polling():
    """Prefect marks a deployment not ready a minute or more after its last poll; the API does not wait."""
    from prefect.client.orchestration import get_client

    from campaigns.api import Unavailable

    name = f"polled-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as prefect:
        flow_id = prefect.create_flow_from_name("send-campaign")
        deployment = prefect.create_deployment(flow_id=flow_id, name=name)
        prefect.get_scheduled_flow_runs_for_deployments([deployment])  # what `campaigns serve` does
    launcher = PrefectLauncher(f"send-campaign/{name}")

    def ready() -> bool:
        try:
            launcher.ready()
            return True
        except Unavailable:
            return False

    wait_for(ready, timeout=15)  # the server marks a polled deployment ready in the background

    # Its last poll is older than any positive threshold by now: a millisecond stands for the 15 s default.
    with (
        use_settings(serve_poll_stale_seconds=0.001),
        pytest.raises(Unavailable, match=f"Nothing has polled send-campaign/{name} for \\d+ s"),
    ):
        launcher.ready()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_token_and_api_serve_from_the_command_line():
    org = f"api-{uuid.uuid4().hex[:8]}"
    cli("orgs", "add", org)
    issued = cli("api", "token", "--org", org, "--role", "viewer")
    token = issued.stdout.strip()
    token_id = re.search(r"token (\S+) \(viewer\)", issued.stderr).group(1)
    assert token.startswith("pytk_") and token not in issued.stderr

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "campaigns.cli", "api", "serve", "--port", str(port)],
        env={**os.environ, "LOG_FORMAT": "json"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        http = api_client(f"http://127.0.0.1:{port}/api/v1", token)
        deadline = time.monotonic() + 60
        while True:
            try:
                r = http.get("/campaigns")
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "api serve did not start"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["total"] == 0
        cli("api", "revoke", token_id)
        assert http.get("/campaigns").status_code == 401
        assert cli("api", "revoke", token_id, check=False).returncode == 1
    finally:
        server.terminate()
        server.wait(timeout=10)
    # Its log: one JSON object a line, an access line per request, never the token.
    log = server.stderr.read().decode() if server.stderr else ""
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [(x["method"], x["path"], x["status"]) for x in lines if x["logger"] == "uvicorn.access"]
    assert ("GET", "/api/v1/campaigns", 200) in access and ("GET", "/api/v1/campaigns", 401) in access, log
    assert token not in log
