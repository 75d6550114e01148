"""Real Postgres, real Redis, a real Prefect server and the real sandbox over HTTP: no mocks.

With DATABASE_URL / REDIS_URL set (CI points them at the machine's servers) the tests use a fresh
database `campaigns_test` on that server and Redis db 15; unset, the embedded servers start by themselves.
TEST_SLOT=N (1-9) gives a second test session its own database, Redis db, Prefect server and folder, so
two sessions can run side by side on one machine. Under pytest-xdist (`make test` runs two workers) worker
gwK takes slot TEST_SLOT+K: each worker has its own services, and a second session needs TEST_SLOT=2 or more.

The unit tests (tests/unit, `make test-fast`) need none of this. When every path on the command line is
under tests/unit, no service starts and DATABASE_URL, REDIS_URL and PREFECT_API_URL are removed from the
environment, so a unit test that reaches for a service fails at once (the `services` fixture, and so `db`,
`org`, `sandbox`..., says why) instead of touching a developer's database. Any other selection, including
none (testpaths: all of tests/), starts the services first.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "tests" / "unit"
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"... in an xdist worker, else ""
SLOT = int(os.environ.get("TEST_SLOT", "0")) + (int(WORKER[2:]) if WORKER else 0)
SUFFIX = f"_{SLOT}" if SLOT else ""
os.environ.setdefault("CAMPAIGNS_HOME", str(ROOT / ".campaigns" / f"test{SUFFIX}"))
os.environ.setdefault("CAMPAIGNS_PREFECT_PORT", str(4278 + 10 * SLOT))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # as `campaigns` runs flows: INFO to the API (the UI)
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "campaigns")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_TASKS_REFRESH_CACHE", "false")
os.environ["RECONCILE_GRACE_SECONDS"] = "2"
os.environ["CONTROL_POLL_SECONDS"] = "0.2"


def _fresh_database(url: str, name: str) -> str:
    from campaigns.store.db import libpq_url

    base = libpq_url(url)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name}")
    if "?" in base:  # pgserver: postgresql://user:@/db?host=/socket
        head, query = base.split("?", 1)
        return head.rsplit("/", 1)[0] + f"/{name}?{query}"
    return base.rsplit("/", 1)[0] + f"/{name}"


def _redis_db(url: str, number: int) -> str:
    """The same server, another logical database (tests never touch a developer's db 0)."""
    if url.startswith("unix://"):
        return url.split("?", 1)[0] + f"?db={number}"
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}/{number}"


def only_unit_tests(config: pytest.Config) -> bool:
    """Every path given (`tests/unit`, `tests/unit/test_x.py::test_y`...) is under tests/unit. No path means
    testpaths, the whole of tests/."""
    paths = [Path(config.invocation_params.dir, arg.split("::", 1)[0]).resolve() for arg in config.args]
    return bool(paths) and all(path.is_relative_to(UNIT) for path in paths)


SERVICES_STARTED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    """Start the services before test modules are collected: Prefect reads PREFECT_API_URL when it is
    first imported, and test modules import it. A test process and the workers it spawns must talk to
    the same Prefect server (they share the number's credentials block). Under xdist the controller runs no
    test: only its workers start services. A session of unit tests only starts none (see the docstring)."""
    config.stash[SERVICES_STARTED] = False
    if not WORKER and getattr(config.option, "numprocesses", None):
        return
    if only_unit_tests(config):
        for name in ("DATABASE_URL", "REDIS_URL", "PREFECT_API_URL"):
            os.environ.pop(name, None)
        return
    from campaigns.infra.embedded import bootstrap
    from campaigns.settings import get_settings

    settings = bootstrap(prefect=True)
    os.environ["DATABASE_URL"] = _fresh_database(settings.database_url or "", f"campaigns_test{SUFFIX}")
    os.environ["REDIS_URL"] = _redis_db(settings.redis_url or "", 15 - SLOT)
    get_settings.cache_clear()
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    from campaigns.store.db import upgrade

    upgrade(os.environ["DATABASE_URL"])
    config.stash[SERVICES_STARTED] = True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use `campaigns serve` last: the serve they start (tests/browser.py) runs the scheduler and
    ingestion flows on the test database until the session ends. Browser tests after every other: once
    Playwright's event loop runs in the main thread, Prefect's sync calls would turn into coroutines."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("browser") is not None,  # Playwright's loop stays
            "campaigns_serve" in getattr(item, "fixturenames", ()),
        )
    )


@pytest.fixture(autouse=True)
def _api_clients_closed() -> Iterator[None]:
    """The API clients a test made (tests.helpers.api_client) are closed when it ends."""
    yield
    if helpers := sys.modules.get("tests.helpers"):
        helpers.close_api_clients()


@pytest.fixture(scope="session")
def services(pytestconfig: pytest.Config) -> None:
    """Started by pytest_configure; every fixture that needs Postgres, Redis or Prefect depends on it."""
    if not pytestconfig.stash[SERVICES_STARTED]:
        pytest.fail(
            "this session started no services: it collected only tests/unit, whose tests use none "
            "(a test that needs Postgres, Redis or Prefect belongs in tests/, not tests/unit)"
        )


@pytest.fixture
def db(services):
    from campaigns.store.db import get_engine

    return get_engine()


@pytest.fixture
def org(db) -> uuid.UUID:
    from tests.helpers import new_org

    return new_org(db)


@pytest.fixture(scope="session")
def receiver(services) -> Iterator[str]:
    """The real webhook receiver, where every sandbox posts its signed status webhooks."""
    from campaigns.webhooks.receiver import KnownSecrets
    from tests.helpers import APP_SECRET, webhook_receiver

    with webhook_receiver(KnownSecrets(app_secrets=[APP_SECRET.encode()], verify_tokens=["verify-me"])) as url:
        yield url + "/webhooks/whatsapp"


@pytest.fixture
def sandbox(receiver) -> Iterator:
    from sandbox import SandboxConfig, SandboxServer
    from tests.helpers import APP_SECRET

    server = SandboxServer(
        SandboxConfig(
            webhook_url=receiver, app_secret=APP_SECRET, sent_delay_ms=10, delivered_delay_ms=10, read_delay_ms=10
        )
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def send_deployment(services) -> Iterator[str]:
    """send-campaign/default in the test Prefect server, registered as `campaigns serve` registers it; nobody
    serves it here, so the runs created for it (launched or scheduled) stay Scheduled for the tests to read."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from deployments.launch import SEND_DEPLOYMENT, drop_scheduled_run
    from flows.send_campaign import send_campaign

    deployment_id = send_campaign.to_deployment(name="default", tags=["campaigns"]).apply()
    yield SEND_DEPLOYMENT
    # Left waiting, they would start for campaigns of a dropped database if this server were ever served.
    with get_client(sync_client=True) as client:
        waiting = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
    for run in waiting:
        drop_scheduled_run(str(run.id), "test session over")
