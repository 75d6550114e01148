"""A worker machine of the `campaigns` work pool (prefect.yaml): what it must have before it takes a run, and
the Prefect worker it then becomes (`campaigns worker`).

A worker runs each flow run as a process of its own Python, which imports the flows from the installed project
(`make sync`): prefect.yaml's entrypoints are module paths and it has no pull step, so where the code sits on a
machine does not matter. What does is that every machine shares one Postgres, one Redis and one Prefect. The
embedded defaults that make one machine work out of the box would here start a private Postgres and Redis,
and that worker would send campaigns nobody else sees: so a worker refuses to start without the three URLs,
and says which it lacks or cannot reach.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

POOL = "campaigns"
SHARED = ("DATABASE_URL", "REDIS_URL", "PREFECT_API_URL")  # one of each for every machine
SEND_DEPLOYMENT = "send-campaign/default"
POLL_SECONDS = 2  # Prefect's workers ask for due runs every 10 s by default: a started campaign waited that long


def setup_problems(environ: Mapping[str, str] = os.environ) -> list[str]:
    """What keeps this machine from being a worker, one line each (empty when it can be one)."""
    missing = [name for name in SHARED if not environ.get(name)]
    if missing:
        return [
            f"{name} is not set: every worker shares the deployment's {_what(name)}, "
            "so it must be given (the embedded default would be this machine's own)"
            for name in missing
        ]
    return [p for p in (_postgres(environ["DATABASE_URL"]), _redis(environ["REDIS_URL"]), _prefect()) if p]


def _what(name: str) -> str:
    return {"DATABASE_URL": "Postgres", "REDIS_URL": "Redis", "PREFECT_API_URL": "Prefect server"}[name]


def _postgres(url: str) -> str | None:
    """Reachable, and its schema is the one this code expects (a machine with older or newer code than the
    database's would write rows the others misread)."""
    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    from campaigns.store.db import alembic_config, sqlalchemy_url

    try:
        engine = sa.create_engine(sqlalchemy_url(url), connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            current = conn.execute(sa.text("select version_num from alembic_version")).scalar()
        engine.dispose()
    except Exception as exc:  # unreachable, refused, or never migrated
        return f"DATABASE_URL: cannot read the campaigns schema ({_first_line(exc)}); `campaigns db upgrade` makes it"
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if current != head:
        return f"DATABASE_URL: the database's schema is {current}, this code's is {head}: the same release everywhere"
    return None


def _redis(url: str) -> str | None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=5).ping()
    except Exception as exc:
        return f"REDIS_URL: cannot reach Redis ({_first_line(exc)})"
    return None


def _prefect() -> str | None:
    """The Prefect API answers, and the pool's deployments are there (`prefect deploy --all` was run)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.read_work_pool(POOL)
            client.read_deployment_by_name(SEND_DEPLOYMENT)
    except Exception as exc:
        return (
            f"PREFECT_API_URL: no work pool `{POOL}` with its deployments there ({_first_line(exc)}); "
            "run `prefect deploy --all` once from the project's folder"
        )
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def worker_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The worker's environment: this one (its runs inherit it), polling every POLL_SECONDS unless set."""
    return {"PREFECT_WORKER_QUERY_SECONDS": str(POLL_SECONDS), **environ}


def worker_command(queue: str, limit: int | None, name: str | None = None) -> list[str]:
    """Prefect's process worker for one work queue of the pool, with this Python (its runs import the flows
    from the same installation)."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--work-queue", queue]
    if limit:
        command += ["--limit", str(limit)]
    if name:
        command += ["--name", name]
    return command
