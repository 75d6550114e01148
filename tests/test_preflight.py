"""Start refuses with every failed check of the seed's checklist, not just the first.

No Prefect here: the numbers have no credentials block (the checklist is handed their credentials, as the
faces hand it those of the block) and nothing is asked of Prefect's runs.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from campaigns.control import lifecycle, services, tenancy
from campaigns.errors import Conflict, Invalid, NotFound
from campaigns.sending.providers import Credentials
from tests.helpers import add_contacts, campaign_row, create_campaign, phone_number_id


class NoPrefect:
    """The runs of campaigns never scheduled: there is nothing to ask Prefect, so any question fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Prefect was asked to {name}")


def sandbox_number(db, org, sandbox) -> uuid.UUID:
    """The number's row only; `start` gives the checklist its credentials."""
    pnid = str(uuid.uuid4().int)[:15]
    sandbox.set_token(pnid, "tok")
    with db.begin() as conn:
        return tenancy.add_number(
            conn, org, provider="sandbox", phone_number_id=pnid, block_name=f"sandbox-{pnid}", mps=1000
        )


@pytest.fixture
def start(sandbox):
    def credentials(block_name: str) -> Credentials:
        return Credentials(block_name.removeprefix("sandbox-"), token="tok", api_base=sandbox.url)

    def start(db, org, campaign_id) -> dict[str, Any]:
        return services.start_campaign(db, org, campaign_id, credentials=credentials, runs=NoPrefect())

    return start


def test_every_failed_check_is_listed_and_nothing_starts(db, org, sandbox, start):
    number = sandbox_number(db, org, sandbox)
    cid = create_campaign(db, org, number, audience_type="tags", audience_filter={"tags": ["nobody"]})
    with db.begin() as conn:
        conn.execute(sa.text("update whatsapp_numbers set active = false where id = :n"), {"n": number})

    with pytest.raises(Invalid) as exc:
        start(db, org, cid)

    details = " | ".join(exc.value.details)
    assert "audience: the audience has no contacts" in details
    assert "whatsapp number active: the WhatsApp number is inactive" in details
    assert campaign_row(db, cid)["status"] == "draft"


def test_a_ready_campaign_starts_with_the_seed_response(db, org, sandbox, start):
    number = sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000001", "name": "Ana"}, {"phone": "+5511900000002", "name": "Bia"}])
    cid = create_campaign(db, org, number)
    body = start(db, org, cid)
    assert body["status"] == "running" and body["total_recipients"] == 2 and body["started_at"]
    with db.begin() as conn, pytest.raises(Conflict, match="Cannot start a running campaign"):
        lifecycle.mark_running(conn, org, cid)
    with db.begin() as conn, pytest.raises(Conflict, match="Cannot edit running campaign"):
        lifecycle.update(conn, org, cid, {"name": "changed"})


def test_another_organization_sees_campaign_not_found(db, org, sandbox, start):
    number = sandbox_number(db, org, sandbox)
    cid = create_campaign(db, org, number)
    with db.begin() as conn:
        other = tenancy.add_org(conn, "other-" + str(cid)[:8])
    with db.begin() as conn, pytest.raises(NotFound, match="Campaign not found"):
        lifecycle.pause(conn, other, cid)
    with pytest.raises(NotFound):
        start(db, other, cid)


def test_the_provider_is_asked_whether_the_token_works_before_anything_starts(db, org, sandbox, start):
    number = sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000001", "name": "Ana"}])
    cid = create_campaign(db, org, number)
    sandbox.set_token(phone_number_id(db, number), "a-newer-token")  # the stored one has expired

    with pytest.raises(Invalid) as exc:
        start(db, org, cid)
    assert exc.value.details == [
        "whatsapp credentials: the provider refused the credentials (190): Error validating "
        "access token: Session has expired: The access token is invalid or has expired."
    ]
    assert campaign_row(db, cid)["status"] == "draft"

    sandbox.set_token(phone_number_id(db, number), "tok")
    sandbox.configure(quality_ratings={phone_number_id(db, number): "RED"})
    body = start(db, org, cid)  # a low quality rating is said, not refused
    assert body["status"] == "running"
    assert body["warnings"] == [
        "number quality: Meta rates this number's quality RED: more blocks and reports may lower its limits"
    ]


def test_an_unreachable_provider_is_a_warning_and_a_disconnected_evolution_instance_a_failure(sandbox):
    from campaigns.sending.number_check import check_number
    from campaigns.sending.providers import Credentials

    down = check_number("meta_cloud", Credentials("123", token="secret-token", api_base="http://127.0.0.1:9"))
    assert (down.accepted, down.reachable) == (False, False) and "secret-token" not in down.detail

    sandbox.configure(evolution_keys={"loja": "k"}, evolution_states={"loja": "close"})
    closed = check_number("evolution", Credentials("loja", token="k", api_base=sandbox.url))
    assert (closed.accepted, closed.reachable) == (False, True)
    assert closed.detail == "instance loja is close, not connected (scan its QR code in Evolution)"
    wrong_key = check_number("evolution", Credentials("loja", token="nope", api_base=sandbox.url))
    assert (wrong_key.accepted, wrong_key.reachable) == (False, True) and "refused" in wrong_key.detail
    sandbox.configure(evolution_states={})
    assert check_number("evolution", Credentials("loja", token="k", api_base=sandbox.url)).accepted


def test_the_checklist_says_when_status_webhooks_never_came_back_and_when_everyone_opted_out(db, org, sandbox, start):
    number = sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000001", "name": "Ana"}, {"phone": "+5511900000002", "name": "Bia"}])
    first = create_campaign(db, org, number)
    assert start(db, org, first)["warnings"] == []  # a number that never sent cannot tell yet
    with db.begin() as conn:  # it sent 20 minutes ago; no webhook moved any message past "sent"
        conn.execute(sa.text("update campaigns set audience_frozen_at = now() where id = :c"), {"c": first})
        conn.execute(
            sa.text("""
            insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, sent_at)
            select :c, organization_id, id, phone, 'sent', now() - interval '20 minutes' from contacts
            where organization_id = :o"""),
            {"c": first, "o": org},
        )

    second = create_campaign(db, org, number)
    assert [w.split(":")[0] for w in start(db, org, second)["warnings"]] == ["webhooks"]

    with db.begin() as conn:
        conn.execute(sa.text("update contacts set opted_out_at = now() where organization_id = :o"), {"o": org})
    third = create_campaign(db, org, number)
    with pytest.raises(Invalid) as exc:
        start(db, org, third)
    assert exc.value.details == ["audience: every contact of the audience opted out"]
    assert start(db, org, create_campaign(db, org, number, respect_opt_out=False))["status"] == "running"


def _graph_answering(status: int, error: dict):
    """A one-answer Graph stand-in: what Meta says when it refuses a check (shapes from its error docs)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = json.dumps({"error": error}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_refused_token_is_never_quoted_back_and_a_rate_limit_is_not_a_verdict():
    from campaigns.sending.number_check import check_number
    from campaigns.sending.providers import Credentials

    token = "EAAGm0PX4ZCpsBAKZCZAbcdefghijklmnop"
    cut = token[:20]
    server = _graph_answering(400, {"code": 190, "message": f"Malformed access token {cut}", "type": "OAuthException"})
    try:
        refused = check_number(
            "meta_cloud", Credentials("123", token=token, api_base=f"http://127.0.0.1:{server.server_port}")
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (refused.accepted, refused.reachable) == (False, True)
    assert refused.detail.startswith("the provider refused the credentials (190): Malformed access token [token]")
    assert token[:12] not in refused.detail

    server = _graph_answering(429, {"code": 4, "message": "Application request limit reached"})
    try:
        limited = check_number(
            "meta_cloud", Credentials("123", token=token, api_base=f"http://127.0.0.1:{server.server_port}")
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (limited.accepted, limited.reachable) == (False, False)  # a warning, not a refusal
    assert limited.detail == "the provider answered HTTP 429 (4): Application request limit reached"
