"""The WhatsApp Cloud API sandbox, exercised over real HTTP (no mocks).

Each test starts a real :class:`SandboxServer` on an ephemeral port; webhook tests also start a small
``http.server`` receiver that records the raw bodies, so signatures are checked over the exact bytes sent.
Evolution's webhooks go to a small aiohttp receiver with Evolution's per-instance route.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from campaigns.sending.providers import Credentials, OutboundMessage, build_provider
from campaigns.webhooks.parse import parse_evolution
from sandbox import SandboxConfig, SandboxServer

TOKEN = "good-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP_SECRET = "sandbox-app-secret"


def text_msg(to: str, body: str = "Olá", biz: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": body},
    }
    if biz is not None:
        payload["biz_opaque_callback_data"] = biz
    return payload


class Receiver:
    """A tiny threaded webhook receiver that stores every POST's raw body and headers."""

    def __init__(self, fail_first: int = 0) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.attempts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.attempts += 1
                    failing = receiver.attempts <= receiver.fail_first
                    if not failing:
                        receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, raw))
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/webhook"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(raw) for _, raw in self.posts]

    def values(self) -> list[dict[str, Any]]:
        """Every ``change.value`` in arrival order."""
        return [c["value"] for p in self.payloads() for e in p["entry"] for c in e["changes"]]

    def statuses(self) -> list[dict[str, Any]]:
        return [s for v in self.values() for s in v.get("statuses", [])]


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(tokens={"PN1": TOKEN})) as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def post(
    server: SandboxServer, payload: Any, phone: str = "PN1", headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(server.messages_url(phone), json=payload, headers=AUTH if headers is None else headers)


async def _burst(url: str, payloads: list[dict[str, Any]], concurrency: int) -> list[tuple[int, dict[str, Any]]]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with sem, session.post(url, json=payload, headers=AUTH) as resp:
                return resp.status, await resp.json()

        return await asyncio.gather(*(one(p) for p in payloads))


def burst(url: str, payloads: list[dict[str, Any]], concurrency: int = 100) -> list[tuple[int, dict[str, Any]]]:
    return asyncio.run(_burst(url, payloads, concurrency))


# ---------------------------------------------------------------------------------------------------------
# Send endpoint
# ---------------------------------------------------------------------------------------------------------


def test_accepts_and_records_text_and_template(tmp_path: Path) -> None:
    record_path = tmp_path / "sent.jsonl"
    cfg = SandboxConfig(record_path=str(record_path), templates={"promo": "Oi {{1}}, {{2}} off!"})
    with SandboxServer(cfg) as server:
        r1 = post(server, text_msg("+55 11 99999-0001", "Olá Ana", biz="rcpt-1"))
        template = {
            "name": "promo",
            "language": {"code": "pt_BR"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "Bia"}, {"type": "text", "text": "10%"}]}
            ],
        }
        r2 = post(
            server,
            {
                "messaging_product": "whatsapp",
                "to": "5511999990002",
                "type": "template",
                "template": template,
                "biz_opaque_callback_data": "rcpt-2",
            },
        )
        assert r1.status_code == 200 and r2.status_code == 200
        b1 = r1.json()
        assert b1["messaging_product"] == "whatsapp"
        assert b1["contacts"] == [{"input": "+55 11 99999-0001", "wa_id": "5511999990001"}]
        assert b1["messages"][0]["message_status"] == "accepted"
        wamid1, wamid2 = b1["messages"][0]["id"], r2.json()["messages"][0]["id"]
        assert wamid1.startswith("wamid.") and wamid1 != wamid2

        msgs = server.messages()
        assert [m["wamid"] for m in msgs] == [wamid1, wamid2]
        assert msgs[0]["biz_opaque_callback_data"] == "rcpt-1"
        assert msgs[0]["rendered"] == "Olá Ana" and msgs[0]["type"] == "text"
        assert msgs[1]["type"] == "template" and msgs[1]["template"]["name"] == "promo"
        assert msgs[1]["rendered"] == "Oi Bia, 10% off!"
        assert msgs[0]["phone_number_id"] == "PN1" and msgs[0]["accepted_at"] <= time.time()

        # Admin listing with the biz filter, and the JSONL record another process could read.
        listed = httpx.get(f"{server.url}/_sandbox/messages", params={"biz": "rcpt-2"}).json()
        assert [m["wamid"] for m in listed] == [wamid2]
        lines = [json.loads(line) for line in record_path.read_text().splitlines()]
        assert [line["wamid"] for line in lines] == [wamid1, wamid2]

        # A known template with the wrong parameter count is refused with Meta's 132000.
        template["components"][0]["parameters"].pop()
        r3 = post(
            server, {"messaging_product": "whatsapp", "to": "5511999990003", "type": "template", "template": template}
        )
        assert r3.status_code == 400 and r3.json()["error"]["code"] == 132000
        assert server.stats()["accepted"] == 2


def test_token_check_and_runtime_rotation(sandbox: SandboxServer) -> None:
    bad = post(sandbox, text_msg("5511999990001"), headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    err = bad.json()["error"]
    assert err["code"] == 190 and err["type"] == "OAuthException"
    assert "Session has expired" in err["message"] and err["fbtrace_id"]
    assert post(sandbox, text_msg("5511999990001"), headers={}).status_code == 401
    assert post(sandbox, text_msg("5511999990001")).status_code == 200

    sandbox.set_token("PN1", "rotated")  # the old token expires mid-campaign
    assert post(sandbox, text_msg("5511999990001")).status_code == 401
    ok = post(sandbox, text_msg("5511999990001"), headers={"Authorization": "Bearer rotated"})
    assert ok.status_code == 200

    resp = httpx.post(f"{sandbox.url}/_sandbox/tokens", json={"phone_number_id": "PN1", "token": None})
    assert resp.status_code == 200
    revoked = post(sandbox, text_msg("5511999990001"), headers={"Authorization": "Bearer rotated"})
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == 190

    # A number without a configured token accepts any bearer token.
    assert post(sandbox, text_msg("5511999990001"), phone="PN2").status_code == 200
    stats = sandbox.stats()
    assert stats["accepted"] == 3 and stats["errors_by_code"][190] == 4
    assert len(sandbox.messages()) == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "JSON"),
        (json.dumps({"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}).encode(), "to"),
        (
            json.dumps({"messaging_product": "whatsapp", "to": "5511999990001", "type": "text", "text": {}}).encode(),
            "text['body']",
        ),
        (
            json.dumps(
                {
                    "messaging_product": "whatsapp",
                    "to": "5511999990001",
                    "type": "template",
                    "template": {"language": {"code": "pt_BR"}},
                }
            ).encode(),
            "template['name']",
        ),
        (
            json.dumps(
                {
                    "messaging_product": "whatsapp",
                    "to": "5511999990001",
                    "type": "template",
                    "template": {"name": "promo"},
                }
            ).encode(),
            "template['language']['code']",
        ),
        (json.dumps({"to": "5511999990001", "type": "text", "text": {"body": "x"}}).encode(), "messaging_product"),
    ],
)
def test_malformed_body_is_code_100_naming_the_field(sandbox: SandboxServer, body: bytes, field: str) -> None:
    resp = httpx.post(sandbox.messages_url("PN1"), content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == 100
    assert field in err["message"] + err["error_data"]["details"]
    assert sandbox.messages() == []
    assert sandbox.stats()["errors_by_code"] == {100: 1}


def test_throughput_cap_is_a_strict_sliding_window() -> None:
    cap = 20
    with SandboxServer(mps_cap=cap) as server:
        # A burst of 60 lands well inside one second: exactly `cap` accepted, the rest 130429.
        results = burst(server.messages_url("PN1"), [text_msg(f"55119000{i:05d}", biz=f"b{i}") for i in range(60)])
        codes = Counter(status if status == 200 else body["error"]["code"] for status, body in results)
        assert codes == {200: cap, 130429: 60 - cap}
        throttled = next(body for status, body in results if status != 200)
        assert throttled["error"]["message"] == "(#130429) Rate limit hit"
        assert all(status == 400 for status, body in results if status != 200)
        # The cap is per phone number.
        other = burst(server.messages_url("PN2"), [text_msg(f"55119100{i:05d}") for i in range(30)])
        assert sum(status == 200 for status, _ in other) == cap

        # Paced traffic above the cap: the window slides (more get through once the burst is a second old) but
        # never exceeds it. The window's exact edges, with the clock passed in: tests/unit/test_sandbox_window.py.
        with httpx.Client(headers=AUTH) as client:
            deadline = time.monotonic() + 1.5
            i = 0
            while time.monotonic() < deadline:
                client.post(server.messages_url("PN1"), json=text_msg(f"55119200{i:05d}"))
                i += 1
                time.sleep(0.02)
        stats = server.stats()
        assert stats["accepted_by_phone"]["PN1"] > cap
        assert stats["max_window_per_second_by_phone"] == {"PN1": cap, "PN2": cap}
        assert stats["throttled_130429"] == stats["requests"] - stats["accepted"]
        # Independent check from the record's arrival times (tiny slack for wall-vs-monotonic clocks).
        times = sorted(m["accepted_at"] for m in server.messages(phone_number_id="PN1"))
        assert max(sum(1 for t in times if end - 0.99 < t <= end) for end in times) <= cap


def test_transient_rule_fails_twice_then_succeeds() -> None:
    with SandboxServer(rules=[{"match": "7$", "code": 131000, "times": 2}]) as server:
        answers = [post(server, text_msg("5511999990007", biz="r7")) for _ in range(3)]
        assert [a.status_code for a in answers] == [500, 500, 200]
        err = answers[0].json()["error"]
        assert err["code"] == 131000 and err["message"].startswith("(#131000)")
        assert post(server, text_msg("5511999990008", biz="r8")).status_code == 200  # no match
        # Attempts are counted per message (phone number, recipient, biz): a new biz fails twice again.
        assert post(server, text_msg("5511999990007", biz="r7-again")).status_code == 500
        assert len(server.messages(biz="r7")) == 1
        assert server.stats()["errors_by_code"] == {131000: 3}


def test_latency_admin_config_and_reset(sandbox: SandboxServer) -> None:
    resp = httpx.post(f"{sandbox.url}/_sandbox/config", json={"latency_ms": 150})
    assert resp.status_code == 200 and resp.json()["latency_ms"] == 150
    started = time.perf_counter()
    assert post(sandbox, text_msg("5511999990001")).status_code == 200
    assert time.perf_counter() - started >= 0.15
    assert httpx.post(f"{sandbox.url}/_sandbox/config", json={"no_such_field": 1}).status_code == 400
    assert httpx.post(f"{sandbox.url}/_sandbox/config", json={"mps_cap": -1}).status_code == 400

    stats = httpx.get(f"{sandbox.url}/_sandbox/stats").json()
    assert stats["accepted"] == 1 and stats["max_window_per_second"] == 1
    assert httpx.post(f"{sandbox.url}/_sandbox/reset").status_code == 200
    assert sandbox.messages() == [] and sandbox.stats()["accepted"] == 0
    assert sandbox.config.latency_ms == 150  # reset clears records, not configuration


def test_handles_hundreds_in_flight_with_latency() -> None:
    """Every one of 1,000 concurrent requests is answered and recorded (its speed is measured in bench/)."""
    n, in_flight = 1000, 250
    with SandboxServer(latency_ms=200) as server:
        results = burst(server.messages_url("PN1"), [text_msg(f"55119{i:08d}") for i in range(n)], in_flight)
        assert all(status == 200 for status, _ in results)
        assert server.stats()["accepted"] == n
        assert len({m["wamid"] for m in server.messages()}) == n


# ---------------------------------------------------------------------------------------------------------
# Webhooks
# ---------------------------------------------------------------------------------------------------------


def test_status_webhooks_are_signed_and_meta_shaped(sandbox: SandboxServer, receiver: Receiver) -> None:
    sandbox.configure(
        webhook_url=receiver.url, read_rate=1.0, waba_id="WABA1", display_phone_numbers={"PN1": "15550001111"}
    )
    wamids = {
        post(sandbox, text_msg(f"551199999000{i}", biz=f"r{i}")).json()["messages"][0]["id"]: f"r{i}" for i in range(5)
    }
    assert sandbox.drain_webhooks(10)

    for headers, raw in receiver.posts:
        expected = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        assert headers["x-hub-signature-256"] == expected
        assert headers["content-type"] == "application/json"
    payload = receiver.payloads()[0]
    assert payload["object"] == "whatsapp_business_account"
    assert payload["entry"][0]["id"] == "WABA1"
    change = payload["entry"][0]["changes"][0]
    assert change["field"] == "messages"
    assert change["value"]["messaging_product"] == "whatsapp"
    assert change["value"]["metadata"] == {"display_phone_number": "15550001111", "phone_number_id": "PN1"}

    seen: dict[str, list[str]] = defaultdict(list)
    for status in receiver.statuses():
        assert status["biz_opaque_callback_data"] == wamids[status["id"]]
        assert status["recipient_id"].startswith("551199999000")
        assert status["timestamp"].isdigit()
        seen[status["id"]].append(status["status"])
    assert {w: sorted(s) for w, s in seen.items()} == {w: ["delivered", "read", "sent"] for w in wamids}
    stats = sandbox.stats()
    assert stats["webhook_events_posted"] == {"sent": 5, "delivered": 5, "read": 5}
    assert stats["webhook_pending"] == 0 and stats["webhook_posts_ok"] == len(receiver.posts)

    # A wrong app secret is visible to a receiver that verifies signatures.
    sandbox.configure(app_secret="rotated-secret")
    post(sandbox, text_msg("5511999990009"))
    assert sandbox.drain_webhooks(10)
    headers, raw = receiver.posts[-1]
    assert headers["x-hub-signature-256"] != "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()


def test_batches_span_entries_changes_and_statuses(sandbox: SandboxServer, receiver: Receiver) -> None:
    # All three statuses of every message fall due together, so they share a POST and must be split.
    sandbox.configure(
        webhook_url=receiver.url,
        read_rate=1.0,
        sent_delay_ms=100,
        delivered_delay_ms=0,
        read_delay_ms=0,
        webhook_statuses_per_change=2,
        webhook_changes_per_entry=2,
    )
    burst(sandbox.messages_url("PN1"), [text_msg(f"55119300{i:05d}") for i in range(10)])
    assert sandbox.drain_webhooks(10)
    payloads = receiver.payloads()
    assert len(receiver.statuses()) == 30
    assert max(len(p["entry"]) for p in payloads) >= 2
    assert max(len(e["changes"]) for p in payloads for e in p["entry"]) == 2
    assert max(len(v["statuses"]) for v in receiver.values()) == 2


def test_duplicates_and_shuffled_order(sandbox: SandboxServer, receiver: Receiver) -> None:
    sandbox.configure(webhook_url=receiver.url, read_rate=1.0, duplicate_rate=1.0, shuffle=True, shuffle_window_ms=300)
    for i in range(20):
        post(sandbox, text_msg(f"55119400{i:05d}"))
    assert sandbox.drain_webhooks(10)
    per_message: dict[str, list[str]] = defaultdict(list)
    for status in receiver.statuses():
        per_message[status["id"]].append(status["status"])
    assert len(per_message) == 20
    for observed in per_message.values():
        assert Counter(observed) == {"sent": 2, "delivered": 2, "read": 2}
    rank = {"sent": 0, "delivered": 1, "read": 2}
    first_seen = [list(dict.fromkeys(observed)) for observed in per_message.values()]
    out_of_order = [o for o in first_seen if [rank[s] for s in o] != sorted(rank[s] for s in o)]
    assert out_of_order, "shuffle=True should post some statuses out of lifecycle order"
    assert sandbox.stats()["webhook_duplicates_scheduled"] == 60


def test_webhook_failure_rule_reports_failed_status(sandbox: SandboxServer, receiver: Receiver) -> None:
    sandbox.configure(webhook_url=receiver.url, rules=[{"match": "3$", "code": 131026, "where": "webhook"}])
    failing = post(sandbox, text_msg("5511999990003", biz="bad"))
    fine = post(sandbox, text_msg("5511999990004", biz="good"))
    assert failing.status_code == 200 and fine.status_code == 200  # Meta accepts, then reports
    bad_wamid = failing.json()["messages"][0]["id"]
    assert sandbox.drain_webhooks(10)

    by_biz: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for status in receiver.statuses():
        by_biz[status["biz_opaque_callback_data"]].append(status)
    assert [s["status"] for s in by_biz["bad"]] == ["failed"]
    failed = by_biz["bad"][0]
    assert failed["id"] == bad_wamid
    assert failed["errors"][0]["code"] == 131026
    assert failed["errors"][0]["title"] == "Message undeliverable"
    assert failed["errors"][0]["error_data"]["details"]
    assert {"sent", "delivered"} <= {s["status"] for s in by_biz["good"]}
    assert sandbox.messages(biz="bad")[0]["webhook_error_code"] == 131026
    assert sandbox.stats()["webhook_failures_by_code"] == {131026: 1}


def test_replies_reference_the_campaign_wamid(sandbox: SandboxServer, receiver: Receiver) -> None:
    sandbox.configure(
        webhook_url=receiver.url, reply_rate=1.0, reply_text="Quero!", display_phone_numbers={"PN1": "15550001111"}
    )
    wamids = {post(sandbox, text_msg(f"+55119500{i:05d}")).json()["messages"][0]["id"] for i in range(3)}
    assert sandbox.drain_webhooks(10)
    replies = [v for v in receiver.values() if "messages" in v]
    inbound = [m for v in replies for m in v["messages"]]
    assert {m["context"]["id"] for m in inbound} == wamids
    for value in replies:
        contacts = {c["wa_id"]: c for c in value["contacts"]}
        for message in value["messages"]:
            assert message["type"] == "text" and message["text"]["body"] == "Quero!"
            assert message["context"]["from"] == "15550001111"
            assert message["from"].startswith("55119500") and message["id"].startswith("wamid.")
            assert message["id"] not in wamids
            assert contacts[message["from"]]["profile"]["name"] == "Sandbox User"
    assert sandbox.stats()["webhook_events_posted"]["reply"] == 3


def test_failed_webhook_posts_are_retried() -> None:
    receiver = Receiver(fail_first=2)
    try:
        with SandboxServer(webhook_url=receiver.url, read_rate=0.0, webhook_retry_backoff_ms=20) as server:
            post(server, text_msg("5511999990001"))
            assert server.drain_webhooks(10)
            assert sorted(s["status"] for s in receiver.statuses()) == ["delivered", "sent"]
            stats = server.stats()
            assert stats["webhook_posts_failed"] == 2
            assert stats["webhook_events_dropped"] == 0

            # An unreachable receiver: events are dropped after the retries, and drain still finishes.
            server.configure(webhook_url="http://127.0.0.1:9/unreachable", webhook_max_retries=1)
            post(server, text_msg("5511999990002"))
            assert server.drain_webhooks(10)
            assert server.stats()["webhook_events_dropped"] == 2
    finally:
        receiver.close()


# ---------------------------------------------------------------------------------------------------------
# Evolution API
# ---------------------------------------------------------------------------------------------------------

EVO_KEY = "evo-key"


def evo_post(
    server: SandboxServer, number: str, text: str = "Olá", instance: str = "loja1", key: str | None = EVO_KEY
) -> httpx.Response:
    body: dict[str, str] = {"number": number, "text": text} if text else {"number": number}
    return httpx.post(server.evolution_send_url(instance), json=body, headers={"apikey": key} if key else {})


@contextlib.asynccontextmanager
async def evolution_receiver() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, str], dict[str, Any]]]]]:
    """Evolution's receiver route ``/webhooks/evolution/{instance}``; yields its base URL and the posts."""
    posts: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    async def receive(request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        posts.append((request.match_info["instance"], headers, await request.json()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/webhooks/evolution/{instance}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/evolution", posts
    finally:
        await runner.cleanup()


def test_evolution_send_text_checks_apikey_and_is_recorded(sandbox: SandboxServer) -> None:
    sandbox.configure(evolution_keys={"loja1": EVO_KEY})
    ok = evo_post(sandbox, "5511999990001", "Olá Ana")
    assert ok.status_code == 201
    body = ok.json()
    key_id = body["key"]["id"]
    assert body["key"] == {"remoteJid": "5511999990001@s.whatsapp.net", "fromMe": True, "id": key_id}
    assert key_id.startswith("3EB0") and body["status"] == "PENDING"
    assert body["message"] == {"conversation": "Olá Ana"} and body["messageType"] == "conversation"
    assert isinstance(body["messageTimestamp"], int) and body["instanceId"] and body["source"] == "unknown"

    unauthorized = {"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}}
    bad = evo_post(sandbox, "5511999990002", key="nope")
    assert (bad.status_code, bad.json()) == (401, unauthorized)
    assert evo_post(sandbox, "5511999990002", key=None).status_code == 401
    other = evo_post(sandbox, "5511999990003", instance="loja2", key="anything")  # not listed: any key
    assert other.status_code == 201 and other.json()["key"]["id"] != key_id

    no_text = evo_post(sandbox, "5511999990004", text="")
    assert no_text.status_code == 400
    assert no_text.json() == {
        "status": 400,
        "error": "Bad Request",
        "response": {"message": ['instance requires property "text"']},
    }

    post(sandbox, text_msg("5511999990005"))  # a Meta send lands in the same record
    records = sandbox.messages()
    assert [r["provider"] for r in records] == ["evolution", "evolution", "meta_cloud"]
    first = records[0]
    assert first["wamid"] == key_id and first["instance"] == "loja1" and first["body"] == "Olá Ana"
    assert first["to"] == "5511999990001" and first["biz_opaque_callback_data"] is None
    assert [r["wamid"] for r in sandbox.messages(phone_number_id="loja2")] == [other.json()["key"]["id"]]
    assert sandbox.stats()["errors_by_code"] == {190: 2, 100: 1}


def test_evolution_failure_rules_and_the_engine_provider(sandbox: SandboxServer) -> None:
    sandbox.configure(
        evolution_keys={"loja1": EVO_KEY},
        rules=[{"match": "6$", "code": 131026}, {"match": "7$", "code": 131000, "times": 1}],
    )
    gone = evo_post(sandbox, "5511999990006")
    assert gone.status_code == 400
    assert gone.json()["response"]["message"] == [
        {"exists": False, "jid": "5511999990006@s.whatsapp.net", "number": "5511999990006"}
    ]
    assert [evo_post(sandbox, "5511999990007").status_code for _ in range(2)] == [500, 201]

    async def send_all() -> list[Any]:
        good = build_provider("evolution", Credentials("loja1", EVO_KEY, sandbox.url))
        wrong = build_provider("evolution", Credentials("loja1", "nope", sandbox.url))
        async with aiohttp.ClientSession() as session:
            return [
                await good.send(session, OutboundMessage(1, "+5511999990001", "text", text="Olá")),
                await good.send(session, OutboundMessage(2, "+5511999990006", "text", text="Olá")),
                await wrong.send(session, OutboundMessage(3, "+5511999990001", "text", text="Olá")),
            ]

    ok, not_on_whatsapp, unauthorized = asyncio.run(send_all())
    assert ok.ok and ok.message_id == sandbox.messages(to="5511999990001")[0]["wamid"]
    assert (not_on_whatsapp.ok, not_on_whatsapp.error_code) == (False, 131026)
    assert (unauthorized.ok, unauthorized.error_code, unauthorized.http_status) == (False, 190, 401)

    sandbox.configure(rules=[], mps_cap=1)  # the throughput cap is per instance, answered as 429
    assert [evo_post(sandbox, "5511999990008", instance="loja3").status_code for _ in range(2)] == [201, 429]


def test_evolution_status_webhooks_one_event_per_post(sandbox: SandboxServer) -> None:
    async def scenario() -> tuple[list[tuple[str, dict[str, str], dict[str, Any]]], dict[str, str], str]:
        async with evolution_receiver() as (url, posts):
            sandbox.configure(
                evolution_keys={"loja1": EVO_KEY},
                evolution_webhook_url=url,
                read_rate=1.0,
                sent_delay_ms=20,
                delivered_delay_ms=80,
                read_delay_ms=80,  # gaps wide enough for the arrival order to be the lifecycle order
                rules=[{"match": "3$", "code": 131026, "where": "webhook"}],
            )
            numbers = {}
            for number in ("5511999990001", "5511999990002", "5511999990003"):
                numbers[(await asyncio.to_thread(evo_post, sandbox, number)).json()["key"]["id"]] = number
            assert await asyncio.to_thread(sandbox.drain_webhooks, 10)
            return list(posts), numbers, url

    posts, numbers, url = asyncio.run(scenario())
    sequences: dict[str, list[str]] = defaultdict(list)
    for instance, headers, event in posts:
        assert instance == "loja1" and headers["apikey"] == EVO_KEY
        assert event["event"] == "messages.update" and event["instance"] == "loja1"
        assert event["apikey"] == EVO_KEY and event["destination"] == f"{url}/loja1"
        assert event["date_time"] and event["server_url"] == sandbox.url and event["sender"].endswith("@s.whatsapp.net")
        data = event["data"]
        assert data["remoteJid"] == f"{numbers[data['keyId']]}@s.whatsapp.net" and data["fromMe"] is True
        assert data["instanceId"] and data["messageId"]
        sequences[data["keyId"]].append(data["status"])
    by_number = {numbers[k]: s for k, s in sequences.items()}
    assert by_number == {
        "5511999990001": ["SERVER_ACK", "DELIVERY_ACK", "READ"],
        "5511999990002": ["SERVER_ACK", "DELIVERY_ACK", "READ"],
        "5511999990003": ["ERROR"],
    }
    # The record's truth and the engine's reading of the webhooks use the same names.
    expected = {key_id: "failed" if number.endswith("3") else "read" for key_id, number in numbers.items()}
    assert {r["wamid"]: r["final_status"] for r in sandbox.messages()} == expected
    parsed = [s for i, (_, _, event) in enumerate(posts) for s in parse_evolution(i, event).statuses]
    assert {s.wamid: s.status for s in parsed} == expected
    stats = sandbox.stats()
    assert stats["webhook_posts_ok"] == len(posts) == 7
    assert stats["webhook_events_posted"] == {"sent": 2, "delivered": 2, "read": 2, "failed": 1}


def test_evolution_reply_is_an_upsert_quoting_the_campaign_message(sandbox: SandboxServer) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], set[str]]:
        async with evolution_receiver() as (url, posts):
            sandbox.configure(
                evolution_webhook_url=url, reply_rate=1.0, read_rate=0.0, reply_text="Quero!", duplicate_rate=1.0
            )
            answers = [await asyncio.to_thread(evo_post, sandbox, f"55119500{i:05d}") for i in range(2)]
            key_ids = {answer.json()["key"]["id"] for answer in answers}
            assert await asyncio.to_thread(sandbox.drain_webhooks, 10)
            return [event for _, _, event in posts], key_ids

    events, key_ids = asyncio.run(scenario())
    upserts = [e for e in events if e["event"] == "messages.upsert"]
    assert len(upserts) == 4  # every event was posted twice, each copy on its own
    for event in upserts:
        data = event["data"]
        assert data["key"]["fromMe"] is False and data["key"]["remoteJid"].startswith("55119500")
        assert data["key"]["id"] not in key_ids and data["pushName"] == "Sandbox User"
        assert data["messageType"] == "extendedTextMessage" and isinstance(data["messageTimestamp"], int)
        assert data["message"]["extendedTextMessage"]["text"] == "Quero!"
    assert {e["data"]["message"]["extendedTextMessage"]["contextInfo"]["stanzaId"] for e in upserts} == key_ids
    # The engine reads it as an inbound reply to our message.
    [inbound] = parse_evolution(1, upserts[0]).inbound
    quoted = upserts[0]["data"]["message"]["extendedTextMessage"]["contextInfo"]["stanzaId"]
    assert (inbound.channel, inbound.text, inbound.name) == ("loja1", "Quero!", "Sandbox User")
    assert inbound.context_wamid == quoted
    assert all(r["replied"] and r["final_status"] == "delivered" for r in sandbox.messages())
    assert sandbox.stats()["webhook_duplicates_scheduled"] == 6
