"""Fixtures and helpers for browser tests of the operator console (the Prefect server's UI).

A browser test module names it in `pytest_plugins = ["tests.browser"]` (its fixtures: campaigns_serve,
browser, page), imports the helpers it uses (ui_url, screenshot, api_url, off_the_loop) and is marked `browser`
(conftest runs such tests last: the `campaigns serve` they start runs the scheduler and ingestion flows
against the test database until the session ends).

Playwright drives the machine's Chromium (Debian's /usr/bin/chromium, `CHROMIUM` to point elsewhere);
`playwright install` is never needed. With SCREENSHOTS_DIR set, `screenshot(page, name)` saves
`$SCREENSHOTS_DIR/<name>.png` (`make screenshots` regenerates docs/screenshots/ that way).

Once Playwright runs, the main thread has a running event loop: Prefect's sync-or-async calls (a block's
`.save()`, as adding a WhatsApp number does) then return a coroutine nobody awaits, and silently do nothing.
`off_the_loop(fn, ...)` runs such set-up in a thread of its own. The sync client
(`get_client(sync_client=True)`) is plain sync and works from the test itself.

The module is imported (for its helpers) before pytest registers it as a plugin, too late for assert
rewriting, which it does not need (it asserts nothing): PYTEST_DONT_REWRITE keeps pytest from warning.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1440, "height": 900}
SEND_DEPLOYMENT = "send-campaign/default"
SERVE_START_TIMEOUT = 120.0  # seconds for `campaigns serve` to register its deployments and poll once
SERVE_STOP_TIMEOUT = 30.0  # seconds between SIGTERM and SIGKILL
EXPECT_TIMEOUT_MS = 20_000  # the UI renders in well under a second; a loaded machine may take longer
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
T = TypeVar("T")


def api_url() -> str:
    """The Prefect API the test session uses (conftest's bootstrap exported it)."""
    return os.environ["PREFECT_API_URL"].rstrip("/")


def ui_url(path: str = "/") -> str:
    """The Prefect server's UI at `path`: PREFECT_API_URL without its `/api`."""
    return api_url().removesuffix("/api") + "/" + path.lstrip("/")


def screenshot(page: Page, name: str, full_page: bool = False) -> Path | None:
    """Save the page (the viewport, or all of it with full_page) as $SCREENSHOTS_DIR/<name>.png when
    SCREENSHOTS_DIR is set; otherwise do nothing. A full page is shot in a viewport as tall as the page
    (Playwright's full_page would leave the UI's fixed sidebar floating half-way down), then the viewport
    is put back."""
    folder = os.environ.get("SCREENSHOTS_DIR")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    if full_page and viewport:
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": viewport["width"], "height": max(height, viewport["height"])})
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    try:
        page.screenshot(path=str(path))
    finally:
        if full_page and viewport:
            page.set_viewport_size(viewport)
    return path


def off_the_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) in a thread with no event loop (module docstring): Prefect's sync-or-async calls
    in it run, instead of returning a coroutine that Playwright's loop never awaits."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="off-the-loop") as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _external(url: str) -> bool:
    """Anything the UI asks of another host (its product analytics) is refused at once: tests stay offline."""
    parts = urlsplit(url)
    return parts.scheme in {"http", "https", "ws", "wss"} and parts.hostname not in LOCAL_HOSTS


def _last_polled(deployment: str) -> datetime | None:
    """When the deployment was last polled by a runner; None while it does not exist or was never polled."""
    try:
        r = httpx.get(f"{api_url()}/deployments/name/{deployment}", timeout=5.0)
    except httpx.HTTPError:
        return None
    if r.status_code != 200 or not r.json().get("last_polled"):
        return None
    return datetime.fromisoformat(r.json()["last_polled"])


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Prefect's runner cancels its flow runs and pauses its schedules), wait, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=SERVE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            warnings.warn(f"campaigns serve ignored SIGTERM for {SERVE_STOP_TIMEOUT:.0f} s; killed", stacklevel=2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # a flow-run process it left behind, if any
        os.killpg(process.pid, signal.SIGKILL)


def _settle_earlier_campaigns() -> None:
    """Earlier tests leave campaigns running, scheduled or paused with nobody sending (they stop mid-campaign
    on purpose). `serve`'s scheduler, 15 s after it starts, would relaunch them all and fill its run slots
    before this session's own campaigns: end them first."""
    import sqlalchemy as sa

    from campaigns.store.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(
            sa.text("update campaigns set status = 'cancelled' where status in ('running', 'scheduled', 'paused')")
        )


@pytest.fixture(scope="session")
def campaigns_serve(services, tmp_path_factory) -> Iterator[subprocess.Popen[bytes]]:
    """`campaigns serve` in its own process, with this session's PREFECT_API_URL, DATABASE_URL and REDIS_URL;
    ready once send-campaign/default exists and the runner has polled it since it started."""
    log_path = tmp_path_factory.mktemp("serve") / "campaigns-serve.log"
    _settle_earlier_campaigns()
    started = datetime.now(UTC)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "campaigns.cli", "serve"],
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # its own group: its flow-run processes go with it
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT
        while True:
            polled = _last_polled(SEND_DEPLOYMENT)
            if polled is not None and polled >= started:
                break
            if process.poll() is not None:
                raise RuntimeError(f"campaigns serve exited with {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{SEND_DEPLOYMENT} was not polled within {SERVE_START_TIMEOUT:.0f} s "
                    f"(last polled: {polled}):\n{_tail(log_path)}"
                )
            time.sleep(0.2)
        process.started_at = started  # type: ignore[attr-defined]  # tests of what serve does from its start
        yield process
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium from the machine (no browser download), one for the session."""
    from playwright.sync_api import expect, sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does it)")
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[Page]:
    """A fresh page (its own context: no cookies or local storage from another test), 1440x900."""
    context = browser.new_context(viewport=VIEWPORT)
    context.route(_external, lambda route: route.abort())
    page = context.new_page()
    yield page
    context.close()
