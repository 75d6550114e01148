"""The recipients' CSV: a COPY in a worker thread, streamed to the client as it is produced."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from campaigns.api.errors import TooMany
from campaigns.control import services
from campaigns.errors import CampaignError

log = logging.getLogger(__name__)


class _ClientGone(Exception):
    pass


_END = object()


class _CsvPipe:
    """File-like sink for services.export_recipients, read by the response in 64 KiB chunks.

    The queue is bounded: a slow client slows the COPY rather than filling memory, and a client that goes
    away stops it at its next write. A response that reads nothing for STALL_SECONDS counts as gone, so a
    disconnect the response never noticed cannot hold a thread and a connection forever.
    """

    CHUNK = 64 * 1024
    STALL_SECONDS = 120.0

    def __init__(self) -> None:
        self.items: queue.Queue[Any] = queue.Queue(maxsize=8)
        self.buffer = bytearray()
        self.gone = threading.Event()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= self.CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self._put(bytes(self.buffer))
            self.buffer.clear()

    def close(self, error: BaseException | None = None) -> None:
        with contextlib.suppress(_ClientGone):
            self.flush()
            self._put(error or _END)

    def _put(self, item: Any) -> None:
        deadline = time.monotonic() + self.STALL_SECONDS
        while True:
            if self.gone.is_set() or time.monotonic() > deadline:
                raise _ClientGone
            with contextlib.suppress(queue.Full):
                self.items.put(item, timeout=0.5)
                return


class CsvExports:
    """Streams the recipients' CSV, at most `limit` at once. An export holds a pooled connection for as long as
    its client takes to read: without a bound, ~32 slow clients took the whole pool and every other request
    waited for one, then failed."""

    def __init__(self, db: sa.Engine, limit: int) -> None:
        self.db = db
        self.limit = limit
        self.slots = threading.BoundedSemaphore(limit)

    def response(self, org: uuid.UUID, campaign_id: uuid.UUID, status: str | None) -> StreamingResponse:
        """Every matching recipient, streamed as the COPY produces it. Errors found before the first row
        (unknown campaign, bad status) are raised here, answered as JSON; nothing is sent until then."""
        if not self.slots.acquire(blocking=False):
            raise TooMany(f"Too many CSV exports at once (at most {self.limit}): try again in a few seconds")
        pipe = _CsvPipe()

        def produce() -> None:
            try:
                self._produce(org, campaign_id, status, pipe)
            finally:
                self.slots.release()

        threading.Thread(target=produce, name=f"csv-{campaign_id}", daemon=True).start()
        first = pipe.items.get()
        if isinstance(first, BaseException):
            raise first

        async def chunks() -> AsyncIterator[bytes]:
            item = first
            try:
                while item is not _END:
                    if isinstance(item, BaseException):  # after the headers: abort, never a truncated 200
                        raise item
                    yield item
                    item = await run_in_threadpool(pipe.items.get)
            finally:
                pipe.gone.set()

        name = f"campaign-{campaign_id}-recipients{'-' + status if status else ''}.csv"
        return StreamingResponse(
            chunks(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def _produce(self, org: uuid.UUID, campaign_id: uuid.UUID, status: str | None, pipe: _CsvPipe) -> None:
        try:
            with self.db.connect() as conn:
                try:
                    services.export_recipients(conn, org, campaign_id, status, pipe)
                except CampaignError:  # refused before the COPY began
                    raise
                except BaseException:
                    conn.invalidate()  # a COPY cut off midway: do not give this connection back
                    raise
        except _ClientGone:
            log.info("recipients export of campaign %s stopped: the client went away", campaign_id)
            return
        except BaseException as exc:
            pipe.close(exc)
            return
        pipe.close()
