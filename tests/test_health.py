"""`/health` on the API and the receiver: each dependency checked for real, a 503 naming what is down."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
import psycopg

from campaigns.api import create_app
from campaigns.api.app import default_health_checks
from campaigns.infra import health
from campaigns.infra.asgi_thread import ThreadedServer
from campaigns.webhook_app import create_app as create_receiver
from campaigns.webhooks.receiver import KnownSecrets

NOBODY = "127.0.0.1:9"  # the discard port: nothing listens there


def test_the_apis_health_names_each_dependency_and_which_is_down(db):
    up = ThreadedServer(create_app(lambda _: "", ready=lambda: None, db=db)).start()
    down = ThreadedServer(
        create_app(
            lambda _: "",
            ready=lambda: None,
            db=db,
            health_checks={
                **default_health_checks(db),
                "redis": health.redis_at(f"redis://{NOBODY}/0"),
                "prefect": health.prefect_at(f"http://{NOBODY}/api"),
            },
        )
    ).start()
    try:
        r = httpx.get(up.url + "/health", timeout=10)
        assert r.status_code == 200 and r.json() == {
            "status": "ok",
            "down": [],
            "checks": {"postgres": "ok", "redis": "ok", "prefect": "ok"},
        }
        r = httpx.get(down.url + "/health", timeout=10)
        assert r.status_code == 503 and r.json()["down"] == ["redis", "prefect"]
        assert r.json()["checks"]["postgres"] == "ok" and r.json()["checks"]["redis"].startswith("down: ")
    finally:
        up.stop()
        down.stop()


def test_the_receivers_health_says_when_postgres_is_away():
    good = ThreadedServer(create_receiver(os.environ["DATABASE_URL"], KnownSecrets())).start()
    bad = ThreadedServer(create_receiver("postgresql://postgres:hunter2@127.0.0.1:9/nowhere", KnownSecrets())).start()
    try:
        assert httpx.get(good.url + "/health", timeout=10).json()["checks"] == {"postgres": "ok"}
        r = httpx.get(bad.url + "/health", timeout=10)
        assert r.status_code == 503 and r.json()["down"] == ["postgres"]
        assert "hunter2" not in r.text  # a password in the URL never reaches the answer
    finally:
        good.stop()
        bad.stop()


def test_the_servers_refuse_a_database_that_is_not_migrated_and_say_what_to_run(db):
    from campaigns.store.db import libpq_url

    name = f"campaigns_unmigrated_{uuid.uuid4().hex[:8]}"
    base = libpq_url(os.environ["DATABASE_URL"])
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    try:
        head, query = base.split("?", 1) if "?" in base else (base, "")  # the embedded Postgres: ?host=/socket
        empty = head.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
        for server in (["api", "serve"], ["webhooks", "serve"]):
            done = subprocess.run(
                [sys.executable, "-m", "campaigns.cli", *server, "--port", "9"],
                env={**os.environ, "DATABASE_URL": empty},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 2, done.stderr
            assert "the database has no tables yet: run `campaigns db upgrade`" in done.stderr
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")
