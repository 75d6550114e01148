"""The sandbox over HTTP: the aiohttp app and its routes, the ``/_sandbox/`` admin API, and two ways to run it.

* :func:`create_app`: Meta's send and phone-number routes, Evolution's send and connection-state routes,
  and the admin API (``/_sandbox/config``, ``stats``, ``messages``, ``reset``, ``tokens``,
  ``webhooks/drain``), all answered by one :class:`~sandbox.state.Sandbox`.
* :class:`SandboxServer`: runs the app on a background thread with its own loop (tests, demo, benchmarks).
* :func:`serve`: runs the app in the foreground (``campaigns sandbox serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Self, TypeVar

from aiohttp import web
from pydantic import ValidationError

from sandbox.config import SandboxConfig
from sandbox.state import Answer, Sandbox

logger = logging.getLogger(__name__)

T = TypeVar("T")

SANDBOX_KEY = web.AppKey("sandbox", Sandbox)


def _respond(answer: Answer) -> web.Response:
    status, body, headers = answer
    return web.json_response(body, status=status, headers=headers)


# --------------------------------------------------------------------------------------------------------
# The APIs the sandbox imitates
# --------------------------------------------------------------------------------------------------------


async def handle_send(request: web.Request) -> web.Response:
    raw = await request.read()
    sandbox = request.app[SANDBOX_KEY]
    phone_number_id = request.match_info["phone_number_id"]
    return _respond(await sandbox.send_graph(phone_number_id, raw, request.headers.get("Authorization")))


async def handle_evolution_send(request: web.Request) -> web.Response:
    raw = await request.read()
    sandbox, instance = request.app[SANDBOX_KEY], request.match_info["instance"]
    server_url = f"{request.scheme}://{request.host}"
    return _respond(await sandbox.send_evolution(instance, raw, request.headers.get("apikey"), server_url))


async def handle_phone_number(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX_KEY]
    return _respond(sandbox.phone_number(request.match_info["phone_number_id"], request.headers.get("Authorization")))


async def handle_evolution_state(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX_KEY]
    return _respond(sandbox.evolution_state(request.match_info["instance"], request.headers.get("apikey")))


# --------------------------------------------------------------------------------------------------------
# The admin API
# --------------------------------------------------------------------------------------------------------


async def handle_messages(request: web.Request) -> web.Response:
    q = request.query
    return web.json_response(request.app[SANDBOX_KEY].messages(q.get("biz"), q.get("to"), q.get("phone_number_id")))


async def handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SANDBOX_KEY].stats())


async def handle_get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[SANDBOX_KEY].config.model_dump(mode="json"))


async def handle_config(request: web.Request) -> web.Response:
    fields = await _json_object(request)
    try:
        cfg = request.app[SANDBOX_KEY].configure(**fields)
    except ValidationError as exc:
        raise web.HTTPBadRequest(text=exc.json(), content_type="application/json") from exc
    return web.json_response(cfg.model_dump(mode="json"))


async def handle_reset(request: web.Request) -> web.Response:
    request.app[SANDBOX_KEY].reset()
    return web.json_response({"reset": True})


async def handle_tokens(request: web.Request) -> web.Response:
    data = await _json_object(request)
    pnid, token = data.get("phone_number_id"), data.get("token")
    if not isinstance(pnid, str) or not (token is None or isinstance(token, str)):
        raise web.HTTPBadRequest(
            text='{"error": "need phone_number_id (str) and token (str or null)"}', content_type="application/json"
        )
    request.app[SANDBOX_KEY].set_token(pnid, token)
    return web.json_response({"phone_number_id": pnid, "token": token})


async def handle_drain(request: web.Request) -> web.Response:
    try:
        timeout = float(request.query.get("timeout", "10"))
    except ValueError as exc:
        raise web.HTTPBadRequest(text='{"error": "timeout must be a number"}', content_type="application/json") from exc
    sandbox = request.app[SANDBOX_KEY]
    drained = await sandbox.drain_webhooks(timeout)
    return web.json_response({"drained": drained, "pending": sandbox.webhooks.pending})


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json() if request.can_read_body else {}
    except ValueError as exc:
        raise web.HTTPBadRequest(text='{"error": "body is not JSON"}', content_type="application/json") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}', content_type="application/json")
    return data


def create_app(config: SandboxConfig | None = None, *, sandbox: Sandbox | None = None) -> web.Application:
    """The aiohttp app: Cloud API and Evolution send endpoints plus the ``/_sandbox/`` admin API."""
    sb = sandbox if sandbox is not None else Sandbox(config)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[SANDBOX_KEY] = sb

    async def webhooks_ctx(_: web.Application) -> AsyncIterator[None]:
        await sb.start_webhooks()
        yield
        await sb.stop_webhooks()

    app.cleanup_ctx.append(webhooks_ctx)
    app.add_routes(
        [
            web.get("/_sandbox/messages", handle_messages),
            web.get("/_sandbox/stats", handle_stats),
            web.get("/_sandbox/config", handle_get_config),
            web.post("/_sandbox/config", handle_config),
            web.post("/_sandbox/reset", handle_reset),
            web.post("/_sandbox/tokens", handle_tokens),
            web.post("/_sandbox/webhooks/drain", handle_drain),
            web.post(r"/{version:v\d+(?:\.\d+)?}/{phone_number_id}/messages", handle_send),
            web.post("/message/sendText/{instance}", handle_evolution_send),
            web.get(r"/{version:v\d+(?:\.\d+)?}/{phone_number_id}", handle_phone_number),
            web.get("/instance/connectionState/{instance}", handle_evolution_state),
        ]
    )
    return app


# --------------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------------


class SandboxServer:
    """The sandbox on a background thread with its own event loop; every method is thread-safe.

    Calls from other threads are executed on the server's loop (``run_coroutine_threadsafe``), so they
    see and change state exactly as the request handlers do, without locks.
    """

    def __init__(
        self, config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0, **overrides: Any
    ) -> None:
        cfg = config or SandboxConfig()
        self.sandbox = Sandbox(cfg.updated(overrides) if overrides else cfg)
        self.host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Start listening; returns once the socket is bound (``.url`` is then valid)."""
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="sandbox-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("sandbox server did not start in time")
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        logger.info("sandbox listening on %s", self.url)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(
            create_app(sandbox=self.sandbox), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self._port, backlog=2048)
            loop.run_until_complete(site.start())
            self._port = runner.addresses[0][1]
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._ready.set()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, cancel pending webhooks and join the thread."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- addresses ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (the Graph API root to give the engine)."""
        return f"http://{self.host}:{self._port}"

    def messages_url(self, phone_number_id: str, version: str = "v24.0") -> str:
        return f"{self.url}/{version}/{phone_number_id}/messages"

    def evolution_send_url(self, instance: str) -> str:
        return f"{self.url}/message/sendText/{instance}"

    # ---- thread-safe access -------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = self._loop
        if loop is None or (self._thread is not None and threading.get_ident() == self._thread.ident):
            return fn(*args, **kwargs)

        async def invoke() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(invoke(), loop).result(timeout=30)

    @property
    def config(self) -> SandboxConfig:
        return self._call(lambda: self.sandbox.config)

    def messages(
        self, biz: str | None = None, to: str | None = None, phone_number_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Accepted messages (copies), optionally filtered by biz_opaque_callback_data / to / sender."""
        return self._call(self.sandbox.messages, biz, to, phone_number_id)

    def stats(self) -> dict[str, Any]:
        return self._call(self.sandbox.stats)

    def configure(self, **fields: Any) -> SandboxConfig:
        return self._call(self.sandbox.configure, **fields)

    def set_token(self, phone_number_id: str, token: str | None) -> None:
        self._call(self.sandbox.set_token, phone_number_id, token)

    def reset(self) -> None:
        self._call(self.sandbox.reset)

    def drain_webhooks(self, timeout: float = 10.0) -> bool:
        """Block until all scheduled webhooks were posted (True) or ``timeout`` passed (False)."""
        loop = self._loop
        if loop is None:
            return self.sandbox.stats()["webhook_pending"] == 0
        future = asyncio.run_coroutine_threadsafe(self.sandbox.drain_webhooks(timeout), loop)
        return future.result(timeout + 5)


def serve(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 8787) -> None:
    """Run the sandbox in the foreground until interrupted (``campaigns sandbox serve``)."""
    logger.info("sandbox serving on http://%s:%d", host, port)
    # The sandbox is also the meter of every rate test: a full garbage collection over its growing record
    # would pause its loop and make paced requests look bunched. Collect young objects rarely instead.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            create_app(config), host=host, port=port, access_log=None, print=None, backlog=2048, shutdown_timeout=1.0
        )
