"""The HTTP API the main app (PyTake) uses: the seed's /api/v1/campaigns, over campaigns.control.services.

Handlers are thin: parse, call the domain (services, lifecycle), answer JSON. Every request carries
`Authorization: Bearer <token>` (issued by `campaigns api token`) and acts for the token's organization
only: another organization's campaign is "Campaign not found", exactly as a missing one. Roles follow the
seed's permissions table. Errors are `{"detail": message, "errors": [details]}` with the status code
chosen here for each refusal's class (`STATUS`): the domain's (404, 409, 422) and this face's own (401,
403, 413, 429, 503).

`start` and `resume` hand the campaign to Prefect: a run of the send-campaign/default deployment that
`campaigns serve` (or a worker) executes. The launcher is injected, so tests can run the flow in a thread;
so are Prefect's other runs (schedule, drop, wake) and the numbers' credentials, which the domain asks for.

Why it stays one module (over 600 lines): issue #12 replaces it with FastAPI; splitting code that is about to be
rewritten would only move it twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from campaigns import api_tokens, json_input
from campaigns.api_tokens import Caller
from campaigns.control import lifecycle, services, tenancy
from campaigns.control.models import CampaignCreate, field_errors
from campaigns.control.runs import LoadCredentials, Runs
from campaigns.errors import CampaignError, Conflict, Invalid, NotFound
from campaigns.reporting import stats
from campaigns.store.db import iso_z
from campaigns.store.schema import API_ROLES
from campaigns.webhook_app import read_limited
from deployments.launch import SEND_DEPLOYMENT, PrefectRuns

log = logging.getLogger(__name__)

PREFIX = "/api/v1"

# The seed's permissions table. Cancel goes with start/pause; number limits change what Meta may bill or
# block for the whole organization, so only its admins touch them.
READ = API_ROLES
OPERATE = ("org_admin", "agent")  # CREATE, UPDATE, START/PAUSE (resume, cancel), SCHEDULE
ADMIN = ("org_admin",)  # DELETE, number limits


class Unauthorized(CampaignError):
    pass


class Forbidden(CampaignError):
    pass


class TooLarge(CampaignError):
    pass


class Unavailable(CampaignError):
    pass


class TooMany(CampaignError):
    retry_after = 5  # seconds; said in Retry-After


# Each refusal's status; a class not named answers as its nearest named ancestor.
STATUS: dict[type[CampaignError], int] = {
    CampaignError: 400,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    Unauthorized: 401,
    Forbidden: 403,
    TooLarge: 413,
    TooMany: 429,
    Unavailable: 503,
}


def status_of(exc: CampaignError) -> int:
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


Launch = Callable[[uuid.UUID], str]  # starts a send-campaign run for the campaign; returns the run's id
Ready = Callable[[], None]  # raises Unavailable when a launch could not be run now


class PrefectLauncher:
    """Runs of the send-campaign deployment. A campaign marked running with no process to send it would
    sit still while the API said "started", so `ready` refuses before anything changes."""

    def __init__(self, deployment: str = SEND_DEPLOYMENT) -> None:
        self.deployment = deployment
        # Imported now, not by the first start: Prefect's import takes ~1.6 s, which a `POST /start` paid
        # (4 s in the walkthrough, against a target of 1 s).
        import prefect.deployments  # noqa: F401
        import prefect.flow_runs  # noqa: F401
        from prefect.client.orchestration import get_client  # noqa: F401

    def ready(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import DeploymentStatus
        from prefect.exceptions import ObjectNotFound

        from campaigns.settings import get_settings

        serve = (
            "`campaigns serve` (or a worker of the `campaigns` work pool, queue `campaigns`) must be running "
            "to send campaigns"
        )
        try:
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(self.deployment)
        except ObjectNotFound:
            raise Unavailable(f"No {self.deployment} deployment in Prefect: {serve}") from None
        except Exception as exc:  # Prefect down or misconfigured: the same answer, with the cause
            raise Unavailable(f"Prefect is not reachable: {serve}", [f"{type(exc).__name__}: {exc}"[:300]]) from None
        if deployment.status == DeploymentStatus.NOT_READY:
            raise Unavailable(f"Nothing is serving {self.deployment} (Prefect marks it not ready): {serve}")
        # Prefect marks a deployment not ready only a minute or more after its last poll; `serve` polls
        # every 0.5 s (deployments/serve.py POLL_SECONDS), so a longer silence means nobody would pick the run up.
        age = (datetime.now(UTC) - deployment.last_polled).total_seconds() if deployment.last_polled else None
        if age is not None and age > get_settings().serve_poll_stale_seconds:
            raise Unavailable(f"Nothing has polled {self.deployment} for {age:.0f} s: {serve}")

    def __call__(self, campaign_id: uuid.UUID) -> str:
        return PrefectRuns(self.deployment).launch(campaign_id)


# -- request bodies (the seed's CampaignCreate is in campaigns.control.models) ------------------------------------


class ScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduled_at: datetime | None = None  # None: the scheduled_at the campaign was created with


class NumberLimitsBody(BaseModel):
    """Fields left out are unchanged; null removes a cap. The preset applies first, explicit fields win."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["meta-conservative", "none"] | None = None
    mps: int | None = None
    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None
    portfolio_id: uuid.UUID | None = None

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set - {"preset"}}


# -- plumbing ---------------------------------------------------------------------------------------------


def _moved(call: Call, t: lifecycle.Transition, **extra: Any) -> dict[str, Any]:
    """The answer to a lifecycle transition: the campaign, where it is now and where it was."""
    return {"campaign_id": call.campaign_id, "status": t.status, "previous_status": t.previous, **extra}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_z(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_jsonable, ensure_ascii=False, separators=(",", ":")).encode()


def _error(exc: CampaignError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, TooMany):
        headers = {"Retry-After": str(exc.retry_after)}
    return Json({"detail": exc.message, "errors": exc.details}, status_code=status_of(exc), headers=headers)


def _uuid(value: str, not_found: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(not_found) from None


def _int(query: QueryParams, name: str, default: int) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise Invalid(f"{name} must be a whole number (got {raw!r})") from None


@dataclass(frozen=True)
class Call:
    """One authorized request, as the (synchronous) handlers see it."""

    caller: Caller
    path: dict[str, str]
    query: QueryParams
    body: Any

    @property
    def org(self) -> uuid.UUID:
        return self.caller.organization_id

    @property
    def campaign_id(self) -> uuid.UUID:
        return _uuid(self.path["id"], "Campaign not found")

    @property
    def number_id(self) -> uuid.UUID:
        return _uuid(self.path["id"], "WhatsApp number not found")

    def json_object(self, empty: dict[str, Any] | None = None) -> dict[str, Any]:
        """The body, which must be a JSON object; `empty` stands for no body where one is optional."""
        body = empty if self.body is None and empty is not None else self.body
        if not isinstance(body, dict):
            raise Invalid("The request body must be a JSON object")
        return body


Handler = Callable[[Call], Any]  # returns a body (200), (status, body) or a Response


# -- CSV export: COPY in a worker thread, streamed to the client --------------------------------------------


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


# -- the API ----------------------------------------------------------------------------------------------


class CampaignsApi:
    def __init__(
        self,
        db: sa.Engine,
        launch: Launch,
        ready: Ready | None,
        runs: Runs,
        credentials: LoadCredentials,
        max_body_bytes: int,
        max_csv_exports: int = 4,
    ) -> None:
        self.db = db
        self.launch = launch
        self.ready = ready or (lambda: None)
        self.runs = runs  # a scheduled campaign's run under Upcoming, a cancelled one's suspended run woken
        self.credentials = credentials  # for a start's checklist
        self.max_body_bytes = max_body_bytes
        # A CSV export holds a pooled connection for as long as its client takes to read: without a bound,
        # ~32 slow clients took the whole pool and every other request waited for one, then failed.
        self.max_csv_exports = max_csv_exports
        self.csv_exports = threading.BoundedSemaphore(max_csv_exports)

    def routes(self) -> list[Route]:
        c = f"{PREFIX}/campaigns"
        table: list[tuple[str, str, tuple[str, ...], Handler, bool]] = [
            ("POST", c, OPERATE, self.create, True),
            ("GET", c, READ, self.index, False),
            ("GET", c + "/{id}", READ, self.get, False),
            ("PATCH", c + "/{id}", OPERATE, self.update, True),
            ("DELETE", c + "/{id}", ADMIN, self.delete, False),
            ("POST", c + "/{id}/start", OPERATE, self.start, False),
            ("POST", c + "/{id}/pause", OPERATE, self.transition(lifecycle.pause), False),
            ("POST", c + "/{id}/resume", OPERATE, self.resume, False),
            ("POST", c + "/{id}/cancel", OPERATE, self.transition(lifecycle.cancel), False),
            ("POST", c + "/{id}/retry-failed", OPERATE, self.retry_failed, True),
            ("POST", c + "/{id}/schedule", OPERATE, self.schedule, True),
            ("GET", c + "/{id}/stats", READ, self.read(services.stats_of), False),
            ("GET", c + "/{id}/progress", READ, self.read(services.progress_of), False),
            ("GET", c + "/{id}/retry-stats", READ, self.read(services.retry_stats_of), False),
            ("GET", c + "/{id}/recipients", READ, self.recipients, False),
            ("GET", c + "/{id}/recipients.csv", READ, self.recipients_csv, False),
            ("GET", PREFIX + "/numbers/{id}/limits", READ, self.number_limits, False),
            ("PUT", PREFIX + "/numbers/{id}/limits", ADMIN, self.set_number_limits, True),
        ]
        routes = []
        for method, path, roles, handler, reads_body in table:
            endpoint = self.endpoint(handler, roles, reads_body)
            routes.append(Route(path, endpoint, methods=[method]))
            if path == c:  # the seed writes POST /api/v1/campaigns/ ; a 307 would lose bodies in some clients
                routes.append(Route(path + "/", endpoint, methods=[method]))
        return routes

    def endpoint(self, handler: Handler, roles: tuple[str, ...], reads_body: bool) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                caller = await run_in_threadpool(self.authorize, request.headers.get("authorization"), roles)
                for name, value in request.query_params.multi_items():
                    json_input.check_text(value, name)
                body = await self.read_json(request) if reads_body else None
                call = Call(caller, dict(request.path_params), request.query_params, body)
                result = await run_in_threadpool(handler, call)
            except CampaignError as exc:
                return _error(exc)
            except ValidationError as exc:
                errors = field_errors(exc)
                return Json({"detail": "; ".join(errors), "errors": errors}, status_code=422)
            except sa.exc.DataError as exc:  # a value no check above caught, refused by Postgres: still the caller's
                log.warning("%s %s: a value refused by the database: %s", request.method, request.url.path, exc.orig)
                cause = str(exc.orig).splitlines()[0] if exc.orig else "invalid value"
                return Json(
                    {"detail": f"A value was refused by the database: {cause}", "errors": [cause]}, status_code=422
                )
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                return Json({"detail": "Internal server error", "errors": []}, status_code=500)
            if isinstance(result, Response):
                return result
            status, content = result if isinstance(result, tuple) else (200, result)
            return Json(content, status_code=status)

        return endpoint

    def authorize(self, header: str | None, roles: Iterable[str]) -> Caller:
        """The token's caller, if its role may do this. Tokens are never logged nor echoed."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Not authenticated: send Authorization: Bearer <token>")
        with self.db.connect() as conn:
            caller = api_tokens.caller(conn, token.strip())
        if caller is None:
            raise Unauthorized("Invalid or revoked token")
        if caller.role not in roles:
            raise Forbidden(
                f"Not enough permissions: this needs the role {' or '.join(roles)}; the token's role is {caller.role}"
            )
        return caller

    async def read_json(self, request: Request) -> Any:
        raw = await read_limited(request, self.max_body_bytes)
        if raw is None:
            raise TooLarge(f"Request body over {self.max_body_bytes} bytes")
        if not raw.strip():
            return None
        return json_input.parse(raw)

    # -- campaigns ----------------------------------------------------------------------------------------

    def create(self, call: Call) -> tuple[int, dict[str, Any]]:
        body = CampaignCreate.model_validate(call.json_object())
        with self.db.begin() as conn:
            campaign_id = lifecycle.create(conn, call.org, body)
            return 201, lifecycle.get(conn, call.org, campaign_id)

    def index(self, call: Call) -> dict[str, Any]:
        with self.db.connect() as conn:
            return services.list_campaigns(
                conn,
                call.org,
                call.query.get("status") or None,
                skip=_int(call.query, "skip", 0),
                limit=_int(call.query, "limit", 50),
            )

    def get(self, call: Call) -> dict[str, Any]:
        """The campaign with its statistics (the seed's "Campaign Status" shape)."""
        with self.db.connect() as conn:
            campaign = lifecycle.get(conn, call.org, call.campaign_id)
            return {**campaign, **stats.stats(conn, campaign)}

    def update(self, call: Call) -> dict[str, Any]:
        changes = call.json_object()
        with self.db.begin() as conn:
            campaign = services.update_campaign(conn, call.org, call.campaign_id, changes)
        if campaign["status"] == "scheduled" and "scheduled_at" in changes:  # its run in Prefect moves too
            services.schedule_run(self.db, call.org, call.campaign_id, self.runs)
        return campaign

    def delete(self, call: Call) -> dict[str, Any]:
        with self.db.begin() as conn:
            t = services.delete_campaign(conn, call.org, call.campaign_id)
        services.follow_transition(self.db, call.org, call.campaign_id, t, self.runs)
        return _moved(call, t, message="Campaign cancelled: campaigns are kept with their history, never erased")

    def start(self, call: Call) -> dict[str, Any]:
        self.ready()
        result = services.start_campaign(
            self.db, call.org, call.campaign_id, credentials=self.credentials, runs=self.runs
        )
        run_id = self.hand_to_prefect(call.org, call.campaign_id)
        return {**result, "flow_run_id": run_id, "message": f"Campaign started. Flow run ID: {run_id}"}

    def resume(self, call: Call) -> dict[str, Any]:
        self.ready()
        with self.db.begin() as conn:
            t = lifecycle.resume(conn, call.org, call.campaign_id)
        if t.status == "scheduled":
            services.follow_transition(self.db, call.org, call.campaign_id, t, self.runs)
            return _moved(call, t, message="Campaign scheduled again: it starts at its time, after the checklist")
        run_id = self.hand_to_prefect(call.org, call.campaign_id)
        return _moved(call, t, flow_run_id=run_id, message=f"Campaign resumed. Flow run ID: {run_id}")

    def retry_failed(self, call: Call) -> dict[str, Any]:
        """Body (optional): {"codes": [131000, ...]}; without codes, every failure but opted-out users."""
        codes = call.json_object(empty={}).get("codes")
        if codes is not None and (not isinstance(codes, list) or not all(type(c) is int for c in codes)):
            raise Invalid("codes: a list of error codes (whole numbers)")
        self.ready()
        with self.db.begin() as conn:
            t, n = lifecycle.retry_failed(conn, call.org, call.campaign_id, codes)
        run_id = self.hand_to_prefect(call.org, call.campaign_id)
        return _moved(call, t, requeued=n, flow_run_id=run_id)

    def hand_to_prefect(self, org: uuid.UUID, campaign_id: uuid.UUID) -> str:
        """Launch the run; if that fails, pause the campaign (saying why) rather than leave it "running"
        with nobody sending: it can be resumed once Prefect is back."""
        try:
            run_id = self.launch(campaign_id)
        except Exception as exc:
            log.exception("launching a send-campaign run for %s failed", campaign_id)
            cause = f"{type(exc).__name__}: {exc}"[:300]
            with self.db.begin() as conn, contextlib.suppress(Conflict):
                lifecycle.pause(conn, org, campaign_id, "launch_failed", f"no send-campaign run: {cause}")
            raise Unavailable(
                "The campaign could not be handed to Prefect and was paused; with `campaigns serve` running, resume it",
                [cause],
            ) from None
        with self.db.begin() as conn:
            services.record_flow_run(conn, org, campaign_id, run_id)
        return run_id

    def transition(self, fn: Callable[[sa.Connection, uuid.UUID, uuid.UUID], lifecycle.Transition]) -> Handler:
        def handler(call: Call) -> dict[str, Any]:
            with self.db.begin() as conn:
                t = fn(conn, call.org, call.campaign_id)
            services.follow_transition(self.db, call.org, call.campaign_id, t, self.runs)  # it leaves Upcoming
            return _moved(call, t)

        return handler

    def schedule(self, call: Call) -> dict[str, Any]:
        body = ScheduleBody.model_validate(call.json_object(empty={}))  # no body: the stored scheduled_at
        with self.db.begin() as conn:
            t = lifecycle.schedule(conn, call.org, call.campaign_id, body.scheduled_at)
            campaign = lifecycle.get(conn, call.org, call.campaign_id)
        run_id = services.follow_transition(self.db, call.org, call.campaign_id, t, self.runs)  # Upcoming
        return _moved(call, t, scheduled_at=campaign["scheduled_at"], flow_run_id=run_id)

    def read(self, fn: Callable[[sa.Connection, uuid.UUID, uuid.UUID], dict[str, Any]]) -> Handler:
        def handler(call: Call) -> dict[str, Any]:
            with self.db.connect() as conn:
                return fn(conn, call.org, call.campaign_id)

        return handler

    def recipients(self, call: Call) -> dict[str, Any]:
        q = call.query
        with self.db.connect() as conn:
            return services.recipients_of(
                conn,
                call.org,
                call.campaign_id,
                q.get("status") or None,
                after=q.get("after") or None,
                page_size=_int(q, "page_size", 100),
            )

    def recipients_csv(self, call: Call) -> Response:
        """Every matching recipient, streamed as the COPY produces it. Errors found before the first row
        (unknown campaign, bad status) are answered as JSON; nothing is sent until then."""
        org, campaign_id, status = call.org, call.campaign_id, call.query.get("status") or None
        if not self.csv_exports.acquire(blocking=False):
            raise TooMany(f"Too many CSV exports at once (at most {self.max_csv_exports}): try again in a few seconds")
        pipe = _CsvPipe()

        def produce() -> None:
            try:
                _produce()
            finally:
                self.csv_exports.release()

        def _produce() -> None:
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

    # -- numbers ------------------------------------------------------------------------------------------

    def number_limits(self, call: Call) -> dict[str, Any]:
        with self.db.connect() as conn:
            return tenancy.number_limits(conn, call.org, call.number_id)

    def set_number_limits(self, call: Call) -> dict[str, Any]:
        body = NumberLimitsBody.model_validate(call.json_object())
        with self.db.begin() as conn:
            return tenancy.set_number_limits(conn, call.org, call.number_id, body.changes(), body.preset)


def create_app(
    launch: Launch | None = None,
    *,
    ready: Ready | None = None,
    runs: Runs | None = None,
    credentials: LoadCredentials | None = None,
    db: sa.Engine | None = None,
    max_body_bytes: int | None = None,
) -> Starlette:
    """The API app. Without `launch`, start and resume create runs of send-campaign/default in Prefect;
    `ready` (by default the launcher's own `ready`, if it has one) is asked first. `runs` (by default
    Prefect's) keeps Upcoming in step; `credentials` (by default from the number's Prefect block) reads a
    number's for a start's checklist."""
    from blocks.whatsapp import fresh_credentials
    from campaigns.settings import get_settings
    from campaigns.store.db import get_engine

    launch = launch or PrefectLauncher()
    ready = ready or getattr(launch, "ready", None)
    settings = get_settings()
    api = CampaignsApi(
        db or get_engine(),
        launch,
        ready,
        runs or PrefectRuns(),
        credentials or fresh_credentials,
        max_body_bytes or settings.api_max_body_bytes,
        settings.api_max_csv_exports,
    )

    async def health(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return Json({"detail": exc.detail, "errors": []}, status_code=exc.status_code, headers=exc.headers)

    return Starlette(routes=[*api.routes(), Route("/health", health)], exception_handlers={HTTPException: http_error})
