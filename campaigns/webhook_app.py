"""The webhook receiver's HTTP face (ASGI): verify, store durably, answer fast.

- GET  /webhooks/whatsapp: Meta's verification handshake against the numbers' verify tokens.
- POST /webhooks/whatsapp: the signature is checked over the raw body (campaigns.webhooks.receiver) before
  any parsing. Bad or missing signature → 401, nothing stored. Oversized → 413. Otherwise the raw body is
  stored in webhook_events and only then answered 200; malformed JSON with a good signature is stored too
  and answered 200 (Meta would retry a 4xx for days; the ingester marks it unparseable for a human to see).
- POST /webhooks/evolution/{instance}: Evolution signs nothing; its `apikey` must match the instance's.
- GET  /health: 200 while Postgres answers, else 503 saying so. GET /metrics: posts received and refused.
"""

from __future__ import annotations

import hmac

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, generate_latest
from sqlalchemy.pool import NullPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from campaigns.infra import health
from campaigns.store.db import sqlalchemy_url
from campaigns.webhooks.receiver import Busy, EventWriter, KnownSecrets, SignatureChecker, evolution_signers


async def read_limited(request: Request, max_bytes: int) -> bytes | None:
    """The raw body, or None when it is (or says it is) over `max_bytes`: never read past the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    database_url: str,
    secrets: KnownSecrets,
    max_body_bytes: int = 3 * 1024 * 1024,
    checker: SignatureChecker | None = None,
) -> Starlette:
    writer = EventWriter(database_url)
    checker = checker or SignatureChecker()
    counted = CollectorRegistry(auto_describe=False)
    received = Counter("webhooks_received", "Webhook posts stored, by provider", ["provider"], registry=counted)
    rejected = Counter("webhooks_rejected", "Webhook posts refused, by reason", ["reason"], registry=counted)

    async def verify(request: Request) -> Response:
        q = request.query_params
        known = await secrets.current()
        token = q.get("hub.verify_token", "")
        token_ok = any(hmac.compare_digest(token.encode(), t.encode()) for t in known.verify_tokens if t)
        if q.get("hub.mode") == "subscribe" and token_ok:
            return PlainTextResponse(q.get("hub.challenge", ""))
        return PlainTextResponse("verification failed", status_code=403)

    async def receive_meta(request: Request) -> Response:
        body = await read_limited(request, max_body_bytes)
        if body is None:
            rejected.labels("too_large").inc()
            return PlainTextResponse("payload too large", status_code=413)
        known = await secrets.current()
        try:
            signers = await checker.meta(body, request.headers.get("x-hub-signature-256"), known)
        except Busy:
            rejected.labels("busy").inc()
            return PlainTextResponse("busy: retry later", status_code=503, headers={"Retry-After": "1"})
        if signers is None:
            rejected.labels("signature").inc()
            return PlainTextResponse("invalid signature", status_code=401)
        await writer.store("meta_cloud", body, signers)
        received.labels("meta_cloud").inc()
        return PlainTextResponse("ok")

    async def receive_evolution(request: Request) -> Response:
        body = await read_limited(request, max_body_bytes)
        if body is None:
            rejected.labels("too_large").inc()
            return PlainTextResponse("payload too large", status_code=413)
        known = await secrets.current()
        signers = evolution_signers(request.path_params["instance"], request.headers.get("apikey", ""), known)
        if signers is None:
            rejected.labels("api_key").inc()
            return PlainTextResponse("invalid api key", status_code=401)
        await writer.store("evolution", body, signers)
        received.labels("evolution").inc()
        return PlainTextResponse("ok")

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(counted), media_type="text/plain; version=0.0.4; charset=utf-8")

    database = health.postgres(sa.create_engine(sqlalchemy_url(database_url), poolclass=NullPool))

    async def health_of_postgres(_: Request) -> Response:
        """Postgres, where every event is stored before it is answered: 503 when it is down."""
        status, body = await run_in_threadpool(health.report, {"postgres": database})
        return JSONResponse(body, status_code=status)

    app = Starlette(
        routes=[
            Route("/webhooks/whatsapp", verify, methods=["GET"]),
            Route("/webhooks/whatsapp", receive_meta, methods=["POST"]),
            Route("/webhooks/evolution/{instance}", receive_evolution, methods=["POST"]),
            Route("/health", health_of_postgres),
            Route("/metrics", metrics),
        ]
    )
    app.state.writer = writer
    return app
