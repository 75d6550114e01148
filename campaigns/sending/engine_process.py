"""The send engine in a process of its own, one per worker; batches reach it through a pipe.

Why a process: pacing at 1,000 msg/s needs the event loop to wake within a few milliseconds of each
reserved slot. In the worker process, Prefect's task threads and their garbage hold the GIL for tens of
milliseconds at a time; sends then woke late and bunched (bench: 130429 answers from the sandbox and
~750 msg/s at a cap of 1,000). Alone in its process the same loop paces at the cap with no 130429.

The child watches its pipe: when the worker dies (even by SIGKILL) the pipe closes and the child exits
at once, so no orphan keeps sending rows whose outcome the next runner will reconcile.

A new interpreter imports for seconds before it can send (SQLAlchemy, aiohttp, redis; over 8 s on a busy
machine), and a runner started again after a kill waited for that. So a runner forks its first engine from
itself before the flow starts (`start_engine_warm`): the copy has every module already. Only then: a fork
copies one thread, and a lock another thread held at that moment (logging's, an HTTP pool's) would stay
locked in the child for ever. An engine started later (the first one died) is a new interpreter, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from campaigns.infra.faultpoints import ENGINE_ANSWERED, pause_point
from campaigns.sending.providers import Credentials, OutboundMessage, SendResult

log = logging.getLogger(__name__)

Results = dict[int, SendResult | None]
LOG_RECORD = -1  # a request id no batch has: the child's warnings travelling to the worker (see _ForwardLogs)


class EngineClient:
    """Used by task threads; any number of batches may be in flight at once. `warm`: the engine is a fork of
    this process (only while it has no other thread: `start_engine_warm`)."""

    def __init__(self, warm: bool = False) -> None:
        # A plain subprocess on a socketpair rather than multiprocessing's spawn, which would re-run the
        # caller's __main__ script in the child.
        parent_sock, child_sock = socket.socketpair()
        self.process: subprocess.Popen[bytes] | _Forked
        if warm:
            self.process = _fork_engine(parent_sock, child_sock)
        else:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "campaigns.sending.engine_process", str(child_sock.fileno())],
                pass_fds=[child_sock.fileno()],
                stdin=subprocess.DEVNULL,
            )
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future[Results]] = {}
        self._ids = itertools.count()
        self._reader = threading.Thread(target=self._read_loop, name="send-engine-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and self._reader.is_alive()

    def deliver(
        self, provider: str, credentials: Credentials, spec: Any, messages: list[OutboundMessage], claimed_at: datetime
    ) -> Results:
        """Send a batch's messages; `claimed_at` is its claim's token (sending.deliver marks rows in flight
        with it, from this process, before they leave)."""
        fut: Future[Results] = Future()
        with self._send_lock:
            request_id = next(self._ids)
            self._pending[request_id] = fut
            try:
                self._conn.send((request_id, provider, credentials, spec, messages, claimed_at))
            except OSError:
                self._pending.pop(request_id, None)
                raise
        return fut.result()

    def _read_loop(self) -> None:
        while True:
            try:
                request_id, ok, payload = self._conn.recv()
            except (EOFError, OSError):
                with self._send_lock:
                    orphans = list(self._pending.values())
                    self._pending.clear()
                for fut in orphans:
                    if not fut.done():
                        fut.set_exception(RuntimeError("the send engine process exited"))
                return
            if request_id == LOG_RECORD:
                self._relog(*payload)
                continue
            with self._send_lock:
                fut = self._pending.pop(request_id)
            if ok:
                fut.set_result(payload)
            else:
                fut.set_exception(RuntimeError(f"send engine: {payload}"))

    def _relog(self, level: int, name: str, message: str, campaign_id: str | None) -> None:
        """Into the log of the run sending for `campaign_id` (every run here when the warning is no campaign's),
        or the process's own log when none is."""
        logger = logging.getLogger(name)
        runs: list[str | None] = [run for run, c in _log_runs.items() if campaign_id in (None, c)] or [None]
        for run_id in runs:
            logger.log(
                level, "send engine: %s", message, extra={"flow_run_id": run_id} if run_id else {"send_to_api": False}
            )

    def close(self, now: bool = False) -> None:
        """Let the engine finish what it holds (up to 5 s), or (`now`) kill it: nothing more leaves."""
        self._conn.close()
        if now:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


class _ForwardLogs(logging.Handler):
    """In the engine process: warnings go to the worker over the pipe (and stay on stderr), so the flow
    run that is sending shows them in the Prefect UI."""

    def __init__(self, send: Any) -> None:
        super().__init__(logging.WARNING)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        from campaigns.sending.deliver import SENDING_FOR

        with contextlib.suppress(Exception):
            self.send((LOG_RECORD, True, (record.levelno, record.name, record.getMessage(), SENDING_FOR.get())))


def _child_main(conn: Connection) -> None:
    from campaigns.sending.deliver import deliver
    from campaigns.sending.providers import build_provider
    from campaigns.sending.send_engine import SendEngine
    from campaigns.settings import get_settings

    engine = SendEngine(get_settings())
    providers: dict[tuple[str, Credentials], Any] = {}
    reply_lock = threading.Lock()

    def send_locked(message: Any) -> None:
        with reply_lock:
            conn.send(message)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(_ForwardLogs(send_locked))

    def reply(request_id: int, fut: Future[Results]) -> None:
        exc: BaseException | None = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        message = (request_id, False, f"{type(exc).__name__}: {exc}") if exc else (request_id, True, fut.result())
        pause_point(ENGINE_ANSWERED)
        with reply_lock:
            try:
                conn.send(message)
            except (BrokenPipeError, OSError):
                os._exit(0)

    while True:
        try:
            request_id, provider_name, credentials, spec, messages, claimed_at = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the worker is gone: stop now, send nothing more
        key = (provider_name, credentials)
        if key not in providers:
            providers[key] = build_provider(provider_name, credentials)
        coro = deliver(engine, providers[key], spec, messages, claimed_at)
        future = asyncio.run_coroutine_threadsafe(coro, engine.loop)
        future.add_done_callback(functools.partial(reply, request_id))


class _Forked:
    """What EngineClient uses of subprocess.Popen, for an engine made by os.fork."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"send engine {self.pid}", timeout)
            time.sleep(0.05)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.wait(5)


def _fork_engine(parent_sock: socket.socket, child_sock: socket.socket) -> _Forked:
    """The engine as a copy of this process. The child never returns into the caller's code: it serves its
    pipe until the worker is gone, then exits without the worker's exit handlers."""
    pid = os.fork()
    if pid:
        return _Forked(pid)
    try:
        parent_sock.close()  # else the worker's death would not close the pipe, and the engine would go on
        _leave_the_worker_behind()
        _child_main(Connection(child_sock.detach()))  # exits by itself once the worker is gone
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(1)


def _leave_the_worker_behind() -> None:
    """In a forked engine: what a new interpreter would not have. The worker's pooled Postgres connections
    are its sockets (dropped here without closing them, so the worker's stay usable); its logging sends
    records to Prefect's API with no flow run (the engine's warnings reach the run through the worker:
    _ForwardLogs)."""
    from campaigns.store.db import get_engine

    with contextlib.suppress(RuntimeError):  # no DATABASE_URL: nothing was pooled
        get_engine().dispose(close=False)
    loggers = [logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    for logger in [logging.root, *loggers]:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    for logger in loggers:
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


_client: EngineClient | None = None
_lock = threading.Lock()
_stopped = threading.Event()
_log_runs: dict[str, str] = {}  # flow run -> its campaign, sending through this process's engine


@contextlib.contextmanager
def engine_logs_to(flow_run_id: str, campaign_id: str) -> Iterator[None]:
    """While a flow run sends, the send engine's warnings about its campaign (a 130429 slowdown, the rate
    limiter unreachable) are written to that run's log too, not only to the worker's stderr."""
    _log_runs[flow_run_id] = campaign_id
    try:
        yield
    finally:
        _log_runs.pop(flow_run_id, None)


class EngineStopped(RuntimeError):
    """The process is stopping (`campaigns serve`): no batch may start a new send engine."""


def get_engine_client() -> EngineClient:
    global _client
    with _lock:
        if _stopped.is_set():
            raise EngineStopped("the send engine was stopped with its process; the next run continues")
        if _client is None or not _client.alive:
            if _client is not None:
                _client.close()
            _client = EngineClient()
        return _client


def start_engine_warm() -> bool:
    """Start this process's send engine now as a fork of it, warm, when that is safe: os.fork exists and no
    other thread runs yet (call it before the flow starts: Prefect's engine starts threads). Returns whether
    it did; otherwise the first batch starts a new interpreter, as before."""
    global _client
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return False
    with _lock:
        if _client is None:
            _client = EngineClient(warm=True)
    return True


def close_engine_client() -> None:
    """End the send-engine process; the next batch starts a new one, which reads the settings afresh."""
    global _client
    with _lock:
        if _client is not None:
            _client.close()
            _client = None


def stop_engine_for_good() -> None:
    """Kill the send engine and start no other in this process (`serve` stopping): the batches in flight fail
    at once and are not retried (engine_stopped), and their rows are reconciled by the next run, as after a
    crash. Waiting instead for a paced campaign's message to get its turn would hold `serve` up to 36 s."""
    global _client
    with _lock:
        _stopped.set()
        if _client is not None:
            _client.close(now=True)
            _client = None


def engine_stopped() -> bool:
    return _stopped.is_set()


if __name__ == "__main__":
    _child_main(Connection(int(sys.argv[1])))
