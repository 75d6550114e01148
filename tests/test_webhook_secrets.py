"""What an unauthenticated request may cost the receiver, and which secrets it trusts."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import sqlalchemy as sa

from campaigns.infra.asgi_thread import ThreadedServer
from campaigns.webhook_app import create_app
from campaigns.webhooks.receiver import KnownSecrets, SignatureChecker
from tests.helpers import APP_SECRET, meta_change, signed

FORGED = {"X-Hub-Signature-256": "sha256=" + "0" * 64}


def test_a_flood_of_large_forged_bodies_is_bounded_and_genuine_webhooks_still_get_in(db):
    """Each large forged body hashes 3 MB once per known secret: past the checker's bound a new one is
    answered 503 at once (Meta retries a 5xx), and a small genuine webhook is checked and stored meanwhile."""
    many = KnownSecrets(app_secrets=[APP_SECRET.encode()] + [f"app-{i}".encode() for i in range(100)])
    server = ThreadedServer(
        create_app(os.environ["DATABASE_URL"], many, checker=SignatureChecker(threads=1, waiting=1))
    ).start()
    url = server.url + "/webhooks/whatsapp"
    big = b"x" * (3 * 1024 * 1024 - 1)
    try:
        with ThreadPoolExecutor(8) as pool:
            flood = [pool.submit(httpx.post, url, content=big, headers=FORGED, timeout=120) for _ in range(8)]
            time.sleep(0.5)  # the flood is being hashed now
            body = b'{"genuine": "%d"}' % time.time_ns()
            genuine = httpx.post(url, content=body, headers=signed(body), timeout=120)
            answers = sorted(f.result().status_code for f in flood)
    finally:
        server.stop()
    assert genuine.status_code == 200
    assert 503 in answers and set(answers) <= {401, 503}, answers
    with db.connect() as conn:
        assert (
            conn.execute(
                sa.text("select count(*) from webhook_events where body = :b"), {"b": body.decode()}
            ).scalar_one()
            == 1
        )


def test_a_malformed_signature_header_is_refused_without_hashing():
    checker = SignatureChecker(threads=1, waiting=0)
    checker.in_flight = checker.limit  # any hashing off the loop would answer Busy
    known = KnownSecrets(app_secrets=[APP_SECRET.encode()])
    for header in (None, "", "sha256=", "sha256=zz" + "0" * 62, "sha1=" + "0" * 40, "sha256=" + "0" * 66):
        assert _run(checker.meta(b"x" * 10_000_000, header, known)) is None


def test_one_secret_loader_at_a_time_however_many_requests_arrive(db):
    running, most, calls = 0, 0, 0
    lock = threading.Lock()

    def slow_loader() -> KnownSecrets:
        nonlocal running, most, calls
        with lock:
            running, calls = running + 1, calls + 1
            most = max(most, running)
        time.sleep(0.3)
        with lock:
            running -= 1
        return KnownSecrets(app_secrets=[APP_SECRET.encode()])

    server = ThreadedServer(create_app(os.environ["DATABASE_URL"], KnownSecrets(loader=slow_loader, ttl=0))).start()
    url = server.url + "/webhooks/whatsapp"
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda _: httpx.post(url, content=b"{}", headers=FORGED, timeout=60).status_code, range(64))
            )
    finally:
        server.stop()
    assert set(answers) == {401}
    assert most == 1, f"{most} loaders ran at once"
    assert calls < 64


def test_a_well_known_secret_signs_nothing_in_the_receiver(db, org, sandbox):
    from blocks.numbers import add_number, secrets_loader

    with db.begin() as conn:
        add_number(
            conn,
            org,
            provider="meta_cloud",
            phone_number_id="555000111",
            token="t",
            app_secret="demo-app-secret",
            verify_token="v",
            api_base=sandbox.url,
        )
        add_number(
            conn,
            org,
            provider="meta_cloud",
            phone_number_id="555000112",
            token="t",
            app_secret="a-real-secret-of-this-app",
            verify_token="v",
            api_base=sandbox.url,
        )
    known = secrets_loader()
    assert b"demo-app-secret" not in known.app_secrets
    assert b"a-real-secret-of-this-app" in known.app_secrets
    server = ThreadedServer(create_app(os.environ["DATABASE_URL"], KnownSecrets(loader=secrets_loader))).start()
    try:
        import json

        body = json.dumps(meta_change("555000111", statuses=[])).encode()
        # the first request waits for the secrets' first load: every number's block, many after a full suite
        assert (
            httpx.post(
                server.url + "/webhooks/whatsapp", content=body, timeout=60, headers=signed(body, "demo-app-secret")
            ).status_code
            == 401
        )
        assert (
            httpx.post(
                server.url + "/webhooks/whatsapp",
                content=body,
                timeout=60,
                headers=signed(body, "a-real-secret-of-this-app"),
            ).status_code
            == 200
        )
    finally:
        server.stop()


def _run(coro):
    import asyncio

    return asyncio.run(coro)
