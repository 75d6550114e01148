"""The main app's first campaign through the API alone: one JWT per user, minted as the main app mints it;
no CLI, no database access. A new organization's admin registers its number (credentials to Prefect),
uploads contacts as JSON and as CSV, reads the checklist, and an agent creates, starts and watches the
campaign until it completes (the real send-campaign flow, the sandbox standing in for Meta)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from campaigns.api import create_app
from campaigns.api.auth import JwtSettings
from campaigns.infra.asgi_thread import ThreadedServer
from tests.helpers import APP_SECRET, api_client, phones, wait_for
from tests.test_api import FlowInThread

SECRET = "the-main-apps-secret-" + "z" * 24
AUD, ISS = "pytake-campaigns", "https://app.pytake.example"


def token_for(user: str, org: str, role: str) -> str:
    """What the main app does when its user calls us: sign who they are, for five minutes."""
    now = int(time.time())
    claims = {"sub": user, "org": org, "org_name": "Loja Exemplo", "role": role, "aud": AUD, "iss": ISS}
    return jwt.encode({**claims, "iat": now, "exp": now + 300}, SECRET, algorithm="HS256")


@pytest.fixture
def api(db):
    launcher = FlowInThread()
    server = ThreadedServer(
        create_app(launcher, ready=lambda: None, db=db, jwt=JwtSettings(SECRET, None, AUD, ISS))
    ).start()
    yield server.url, launcher
    server.stop()


def test_a_new_organization_reaches_its_first_campaign_through_the_api_alone(api, sandbox):
    url, launcher = api
    org = f"loja-{uuid.uuid4().hex[:8]}"
    admin = api_client(url + "/api/v1", token_for("ana", org, "org_admin"))
    agent = api_client(url + "/api/v1", token_for("bruno", org, "agent"))

    phone_number_id = str(uuid.uuid4().int)[:15]
    sandbox.set_token(phone_number_id, "meta-token")  # Meta's side: the number's access token
    r = admin.post(
        "/numbers",
        json={
            "provider": "sandbox",
            "phone_number_id": phone_number_id,
            "access_token": "meta-token",
            "app_secret": APP_SECRET,
            "verify_token": "verify-me",
            "api_base": sandbox.url,
            "mps": 200,
        },
    )
    assert r.status_code == 201, r.text
    number = r.json()
    assert "meta-token" not in r.text and APP_SECRET not in r.text  # credentials are never answered
    assert agent.get("/numbers").json() == [number]

    recent = (datetime.now(UTC) - timedelta(hours=1)).isoformat()  # they wrote an hour ago: inside the 24 h window
    first, rest = phones(30)[:20], phones(30)[20:]
    r = agent.post(
        "/contacts",
        json={
            "contacts": [
                *(
                    {
                        "phone": p,
                        "name": f"Cliente {i}",
                        "tags": ["vip"],
                        "last_inbound_at": recent,
                        "attributes": {"city": "Recife"},
                    }
                    for i, p in enumerate(first)
                ),
                {"phone": "not a phone"},
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert (r.json()["inserted"], r.json()["rejected"]) == (
        20,
        [{"at": "contacts[20]", "reason": "invalid phone 'not a phone'"}],
    )
    # A second upsert that leaves `city` out keeps it, and one without `name` keeps the name.
    again = agent.post("/contacts", json={"contacts": [{"phone": first[0], "attributes": {"plan": "gold"}}]})
    assert (again.json()["updated"], again.json()["rejected"]) == (1, [])
    twice = agent.post("/contacts", json={"contacts": [{"phone": first[1]}, {"phone": first[1]}]}).json()
    assert twice["rejected"] == [{"at": "contacts[1]", "reason": "duplicate phone (first seen on contacts[0])"}]
    csv = "phone,name,last_inbound_at,city\n" + "".join(f"{p},Cliente CSV,{recent},Olinda\n" for p in rest)
    csv += "123,Curto,,Olinda\n"
    r = agent.post("/contacts/import", content=csv.encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json()["inserted"] == 10 and [x["at"] for x in r.json()["rejected"]] == ["line 12"]

    body = {
        "name": "Primeira campanha",
        "whatsapp_number_id": number["id"],
        "message_type": "text",
        "message_content": {"text": "Olá {{contact.name}} de {{contact.city}}!"},
        "audience_type": "all_contacts",
        "messages_per_hour": None,
        "delay_between_messages_seconds": 0,
    }
    created = agent.post("/campaigns", json=body)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    checklist = agent.get(f"/campaigns/{cid}/preflight").json()
    assert checklist["ok"] and checklist["audience_size"] == 30
    assert {c["name"] for c in checklist["checks"]} >= {
        "campaign status",
        "audience",
        "whatsapp number active",
        "redis",
    }
    assert agent.get(f"/campaigns/{cid}").json()["status"] == "draft"  # the checklist changed nothing

    r = agent.post(f"/campaigns/{cid}/start")
    assert r.status_code == 200 and r.json()["total_recipients"] == 30, r.text
    wait_for(lambda: agent.get(f"/campaigns/{cid}/progress").json()["current_status"] == "completed", timeout=90)
    launcher.threads[0].join(timeout=30)
    stats = agent.get(f"/campaigns/{cid}/stats").json()
    assert (stats["total_recipients"], stats["messages_sent"], stats["messages_failed"]) == (30, 30, 0)
    sent = sandbox.messages(phone_number_id=phone_number_id)
    assert len(sent) == 30 and len({m["to"] for m in sent}) == 30  # each contact once
    assert any("Cliente 3 de Recife" in str(m) for m in sent)
    assert any("Cliente 0 de Recife" in str(m) for m in sent)  # its city kept through the second upsert
    trail = admin.get(f"/campaigns/{cid}/audit").json()
    assert [(e["actor"], e["action"]) for e in trail] == [("bruno", "create"), ("bruno", "start")]
