"""The API's routes: the seed's /api/v1/campaigns and the numbers' limits, over campaigns.control.

Endpoints are thin: FastAPI checks the declared parameters and bodies (and documents them at
/api/v1/openapi.json), `GuardedRoute` refuses what must never reach a model or Postgres, and each endpoint
calls the domain (services, lifecycle, tenancy) and returns its answer in the declared shape. Every request
carries `Authorization: Bearer <token>` and acts for the token's organization only: another organization's
campaign is "Campaign not found", exactly as a missing one.

`start` and `resume` hand the campaign to Prefect: a run of the send-campaign/default deployment that
`campaigns serve` (or a worker) executes. The launcher is injected, so tests can run the flow in a thread;
so are Prefect's other runs (schedule, drop, wake) and the numbers' credentials, which the domain asks for.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Path, Query
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import SecretStr, ValidationError
from pydantic_core import to_jsonable_python
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match

from campaigns import api_tokens, json_input
from campaigns.api import metrics
from campaigns.api.auth import JwtSettings, JwtVerifier
from campaigns.api.csv_export import CsvExports
from campaigns.api.errors import (
    ErrorBody,
    Forbidden,
    TooLarge,
    Unauthorized,
    Unavailable,
    invalid,
    refusal,
    validation_lines,
)
from campaigns.api.launcher import Launch, PrefectLauncher, Ready
from campaigns.api.schemas import (
    AuditEntry,
    Campaign,
    CampaignPage,
    CampaignUpdate,
    CampaignWithStats,
    ContactsBody,
    ImportReport,
    Number,
    NumberCreate,
    NumberLimits,
    NumberLimitsBody,
    PreflightReport,
    Progress,
    RecipientsPage,
    RetryFailedBody,
    RetryStats,
    ScheduleBody,
    Started,
    Stats,
    Transition,
)
from campaigns.api_tokens import Caller
from campaigns.audience.contacts import ImportFileError, import_csv, import_records
from campaigns.audience.contacts import ImportReport as ContactsImport
from campaigns.control import lifecycle, services, tenancy
from campaigns.control.models import CampaignCreate, field_errors, shown
from campaigns.control.runs import LoadCredentials, Runs
from campaigns.errors import CampaignError, Conflict, Invalid, NotFound
from campaigns.infra import health
from campaigns.reporting import stats
from campaigns.store import audit as audit_log
from campaigns.store.db import schema_behind
from campaigns.store.schema import API_ROLES
from campaigns.webhook_app import read_limited
from deployments.launch import PrefectRuns

log = logging.getLogger(__name__)

PREFIX = "/api/v1"

# The seed's permissions table. Cancel is irreversible and does all DELETE does, so it goes with DELETE;
# retry-failed sends again, so it goes with START. Number limits change what Meta may bill or block for the
# whole organization: its admins only.
READ = API_ROLES
OPERATE = ("org_admin", "agent")  # CREATE, UPDATE, START/PAUSE (resume, retry-failed), SCHEDULE
ADMIN = ("org_admin",)  # DELETE, cancel, number limits


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    said = {
        401: "no token, or an unknown, revoked or expired one",
        403: "the token's role may not do this",
        404: "no such campaign or number in the token's organization",
        409: "the campaign is not in a state that allows this",
        413: "the body is over the size limit",
        422: "a value is wrong: each line of `errors` names its field",
        429: "too many at once: try again after Retry-After seconds",
        503: "Prefect cannot take the campaign now (nothing serving send-campaign)",
    }
    return {code: {"model": ErrorBody, "description": said[code]} for code in (401, 403, 404, 422, *codes)}


def _query_names(d: Dependant) -> set[str]:
    return {p.alias for p in d.query_params}.union(*(_query_names(sub) for sub in d.dependencies))


def guarded_route(max_body_bytes: int) -> type[APIRoute]:
    """A route that, before FastAPI parses anything, refuses a body over the limit, JSON nested too deeply or
    holding what Postgres cannot store (NUL, lone surrogates, NaN), and NUL in the query; and answers every
    refusal, wherever raised, as `{"detail", "errors"}`."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            known = sorted(_query_names(self.dependant))

            async def guarded(request: Request) -> Response:
                try:
                    for name, value in request.query_params.multi_items():
                        json_input.check_text(name, "a query parameter's name")
                        if name not in known:  # a typo (?stauts=) would otherwise be ignored in silence
                            raise Invalid(f"{shown(name)}: not a query parameter here ({', '.join(known) or 'none'})")
                        json_input.check_text(value, name)
                    if request.method in ("POST", "PUT", "PATCH"):
                        raw = await read_limited(request, max_body_bytes)
                        if raw is None:
                            raise TooLarge(f"Request body over {max_body_bytes} bytes")
                        request._body = raw  # FastAPI reads these two, already checked
                        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
                        if not media or media == "application/json" or media.endswith("+json"):
                            request._json = json_input.parse(raw) if raw.strip() else None
                    return await handler(request)
                except CampaignError as exc:
                    return refusal(exc)
                except RequestValidationError as exc:
                    return invalid(validation_lines(exc.errors()))
                except ValidationError as exc:  # the domain's own check of a merged campaign (PATCH)
                    return invalid(field_errors(exc))
                except sa.exc.DataError as exc:  # a value no check caught, refused by Postgres: still the caller's
                    log.warning(
                        "%s %s: a value refused by the database: %s", request.method, request.url.path, exc.orig
                    )
                    cause = str(exc.orig).splitlines()[0] if exc.orig else "invalid value"
                    return JSONResponse(
                        {"detail": f"A value was refused by the database: {cause}", "errors": [cause]}, status_code=422
                    )
                except HTTPException:
                    raise
                except Exception:
                    log.exception("%s %s failed", request.method, request.url.path)
                    return JSONResponse({"detail": "Internal server error", "errors": []}, status_code=500)

            return guarded

    return GuardedRoute


def _uuid(value: str, not_found: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(not_found) from None


def campaign_id(id: Annotated[str, Path(description="the campaign's id (a UUID)")]) -> uuid.UUID:  # noqa: A002
    return _uuid(id, "Campaign not found")


def number_id(id: Annotated[str, Path(description="the WhatsApp number's id (a UUID)")]) -> uuid.UUID:  # noqa: A002
    return _uuid(id, "WhatsApp number not found")


_bearer = HTTPBearer(auto_error=False, description="a token from `campaigns api token`")


def _role(*roles: str) -> Any:
    """The caller, if its token's role is one of `roles` (401 without a live token, 403 for another role)."""

    def caller(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Caller:
        api: CampaignsApi = request.app.state.campaigns
        return api.authorize(credentials, roles)

    return Depends(caller)


Reader = Annotated[Caller, _role(*READ)]
Operator = Annotated[Caller, _role(*OPERATE)]
Admin = Annotated[Caller, _role(*ADMIN)]
CampaignId = Annotated[uuid.UUID, Depends(campaign_id)]


def audit(
    conn: sa.Connection,
    caller: Caller,
    action: str,
    campaign_id: uuid.UUID | None = None,
    *,
    number_id: uuid.UUID | None = None,
    **details: Any,
) -> None:
    """Record the caller's action in its own transaction (audit_log)."""
    audit_log.record(
        conn,
        caller.organization_id,
        caller.actor,
        caller.role,
        action,
        campaign_id=campaign_id,
        number_id=number_id,
        details=to_jsonable_python(details),
    )


def _report(report: ContactsImport, at: str) -> dict[str, Any]:
    return {
        "imported": report.imported,
        "inserted": report.inserted,
        "updated": report.updated,
        "rejected": [{"at": at.format(where), "reason": reason} for where, reason in report.errors],
        "encoding": report.encoding,
    }


def _moved(cid: uuid.UUID, t: lifecycle.Transition, **extra: Any) -> dict[str, Any]:
    """The answer to a lifecycle transition: the campaign, where it is now and where it was."""
    return {"campaign_id": cid, "status": t.status, "previous_status": t.previous, **extra}


NumberId = Annotated[uuid.UUID, Depends(number_id)]


class CampaignsApi:
    """What the endpoints do, over the domain; one per app, holding what the app was given."""

    def __init__(
        self,
        db: sa.Engine,
        launch: Launch,
        ready: Ready | None,
        runs: Runs,
        credentials: LoadCredentials,
        jwt: JwtVerifier | None = None,
    ) -> None:
        self.db = db
        self.jwt = jwt  # None: opaque tokens only
        self.launch = launch
        self.ready = ready or (lambda: None)
        self.runs = runs  # a scheduled campaign's run under Upcoming, a cancelled one's suspended run woken
        self.credentials = credentials  # for a start's checklist

    def authorize(self, credentials: HTTPAuthorizationCredentials | None, roles: tuple[str, ...]) -> Caller:
        """The token's caller, if its role may do this. Tokens are never logged nor echoed."""
        if credentials is None or not credentials.credentials.strip():
            raise Unauthorized("Not authenticated: send Authorization: Bearer <token>")
        token = credentials.credentials.strip()
        if self.jwt is not None and not token.startswith(api_tokens.PREFIX):
            claims = self.jwt.claims(token)
            with self.db.begin() as conn:
                org = tenancy.org_for_external_id(conn, claims.org, claims.org_name)
            caller: Caller | None = Caller(org, claims.role, claims.user)
        else:
            with self.db.connect() as conn:
                caller = api_tokens.caller(conn, token)
        if caller is None:
            raise Unauthorized("Invalid, revoked or expired token")
        if caller.role not in roles:
            raise Forbidden(
                f"Not enough permissions: this needs the role {' or '.join(roles)}; the token's role is {caller.role}"
            )
        return caller

    def moved(self, org: uuid.UUID, cid: uuid.UUID, t: lifecycle.Transition, **extra: Any) -> dict[str, Any]:
        """A transition's answer, once Prefect follows it (a scheduled run leaves Upcoming, a suspended one wakes)."""
        services.follow_transition(self.db, org, cid, t, self.runs)
        return _moved(cid, t, **extra)

    def move(
        self, caller: Caller, cid: uuid.UUID, action: str, fn: Callable[..., lifecycle.Transition], **extra: Any
    ) -> dict[str, Any]:
        """A transition with its audit row in one transaction, then its answer once Prefect follows it."""
        with self.db.begin() as conn:
            t = fn(conn, caller.organization_id, cid)
            audit(conn, caller, action, cid)
        return self.moved(caller.organization_id, cid, t, **extra)

    def hand_to_prefect(self, org: uuid.UUID, cid: uuid.UUID) -> str:
        """Launch the run; if that fails, pause the campaign (saying why) rather than leave it "running"
        with nobody sending: it can be resumed once Prefect is back."""
        try:
            run_id = self.launch(cid)
        except Exception as exc:
            log.exception("launching a send-campaign run for %s failed", cid)
            cause = f"{type(exc).__name__}: {exc}"[:300]
            with self.db.begin() as conn, contextlib.suppress(Conflict):
                lifecycle.pause(conn, org, cid, "launch_failed", f"no send-campaign run: {cause}")
            raise Unavailable(
                "The campaign could not be handed to Prefect and was paused; with `campaigns serve` running, resume it",
                [cause],
            ) from None
        with self.db.begin() as conn:
            services.record_flow_run(conn, org, cid, run_id)
        return run_id

    def read(
        self, fn: Callable[[sa.Connection, uuid.UUID, uuid.UUID], dict[str, Any]], caller: Caller, cid: uuid.UUID
    ) -> dict[str, Any]:
        with self.db.connect() as conn:
            return fn(conn, caller.organization_id, cid)


def routers(api: CampaignsApi, csv: CsvExports, max_body_bytes: int, cc: str) -> list[APIRouter]:
    """The API's routes; `cc` is the country code prepended to imported phones written without one."""
    # strict_content_type off: a body sent without a Content-Type is still read as JSON (curl -d, the old API)
    route_class = guarded_route(max_body_bytes)
    r = APIRouter(prefix=PREFIX, route_class=route_class, strict_content_type=False, tags=["campaigns"])
    n = APIRouter(prefix=PREFIX, route_class=route_class, strict_content_type=False, tags=["numbers"])
    c = APIRouter(prefix=PREFIX, route_class=route_class, strict_content_type=False, tags=["contacts"])
    moves: dict[str, Any] = {"response_model_exclude_unset": True, "responses": _errors(409)}

    @r.post("/campaigns", status_code=201, response_model=Campaign, responses=_errors(413))
    def create_campaign(body: CampaignCreate, caller: Operator) -> dict[str, Any]:
        """Create a draft campaign (the seed's "1. Criar Campanha")."""
        with api.db.begin() as conn:
            cid = lifecycle.create(conn, caller.organization_id, body)
            audit(conn, caller, "create", cid, name=body.name)
            return lifecycle.get(conn, caller.organization_id, cid)

    # The seed writes POST /api/v1/campaigns/ ; a 307 to the other would lose bodies in some clients.
    r.add_api_route(
        "/campaigns/",
        create_campaign,
        methods=["POST"],
        status_code=201,
        response_model=Campaign,
        include_in_schema=False,
    )

    @r.get("/campaigns", response_model=CampaignPage, responses=_errors())
    def list_campaigns(
        caller: Reader,
        status: Annotated[str | None, Query(description="only campaigns in this status")] = None,
        skip: int = 0,
        limit: Annotated[int, Query(description="at most 200")] = 50,
    ) -> dict[str, Any]:
        """The organization's campaigns, newest first."""
        with api.db.connect() as conn:
            return services.list_campaigns(conn, caller.organization_id, status or None, skip=skip, limit=limit)

    r.add_api_route(
        "/campaigns/", list_campaigns, methods=["GET"], response_model=CampaignPage, include_in_schema=False
    )

    @r.get("/campaigns/{id}", response_model=CampaignWithStats, responses=_errors())
    def get_campaign(caller: Reader, cid: CampaignId) -> dict[str, Any]:
        """The campaign with its statistics (the seed's "Campaign Status")."""
        with api.db.connect() as conn:
            campaign = lifecycle.get(conn, caller.organization_id, cid)
            return {**campaign, **stats.stats(conn, campaign)}

    @r.patch("/campaigns/{id}", response_model=Campaign, responses=_errors(409, 413))
    def update_campaign(body: CampaignUpdate, caller: Operator, cid: CampaignId) -> dict[str, Any]:  # type: ignore[valid-type]
        """Edit a draft, scheduled or paused campaign; fields left out are unchanged."""
        changes = body.model_dump(mode="json", exclude_unset=True)  # type: ignore[attr-defined]
        with api.db.begin() as conn:
            campaign = services.update_campaign(conn, caller.organization_id, cid, changes)
            audit(conn, caller, "update", cid, fields=sorted(changes))
        if campaign["status"] == "scheduled" and "scheduled_at" in changes:  # its run in Prefect moves too
            services.schedule_run(api.db, caller.organization_id, cid, api.runs)
        return campaign

    @r.delete(
        "/campaigns/{id}",
        response_model=Transition,
        response_model_exclude_unset=True,
        responses=_errors(409),
    )
    def delete_campaign(caller: Admin, cid: CampaignId) -> dict[str, Any]:
        """Cancel the campaign: campaigns are kept with their history, never erased."""
        message = "Campaign cancelled: campaigns are kept with their history, never erased"
        return api.move(caller, cid, "delete", services.delete_campaign, message=message)

    @r.post("/campaigns/{id}/start", response_model=Started, responses=_errors(409, 503))
    def start_campaign(caller: Operator, cid: CampaignId) -> dict[str, Any]:
        """Run the pre-launch checklist, then hand the campaign to Prefect (the seed's "2. Iniciar Campanha")."""
        api.ready()

        def audited(conn: sa.Connection, audience: int) -> None:
            audit(conn, caller, "start", cid, total_recipients=audience)

        result = services.start_campaign(
            api.db, caller.organization_id, cid, credentials=api.credentials, runs=api.runs, on_started=audited
        )
        run_id = api.hand_to_prefect(caller.organization_id, cid)
        return {**result, "flow_run_id": run_id, "message": f"Campaign started. Flow run ID: {run_id}"}

    @r.post("/campaigns/{id}/pause", response_model=Transition, **moves)
    def pause_campaign(caller: Operator, cid: CampaignId) -> dict[str, Any]:
        """Pause sending; resume continues where it stopped."""
        return api.move(caller, cid, "pause", lifecycle.pause)

    @r.post("/campaigns/{id}/cancel", response_model=Transition, **moves)
    def cancel_campaign(caller: Admin, cid: CampaignId) -> dict[str, Any]:
        """Cancel for good: what was not sent never will be (org_admin, as DELETE)."""
        return api.move(caller, cid, "cancel", lifecycle.cancel)

    @r.post(
        "/campaigns/{id}/resume",
        response_model=Transition,
        response_model_exclude_unset=True,
        responses=_errors(409, 503),
    )
    def resume_campaign(caller: Operator, cid: CampaignId) -> dict[str, Any]:
        """Resume a paused campaign: sending continues where it stopped, or it waits for its scheduled time."""
        api.ready()
        with api.db.begin() as conn:
            t = lifecycle.resume(conn, caller.organization_id, cid)
            audit(conn, caller, "resume", cid)
        if t.status == "scheduled":
            return api.moved(
                caller.organization_id,
                cid,
                t,
                message="Campaign scheduled again: it starts at its time, after the checklist",
            )
        run_id = api.hand_to_prefect(caller.organization_id, cid)
        return _moved(cid, t, flow_run_id=run_id, message=f"Campaign resumed. Flow run ID: {run_id}")

    @r.post(
        "/campaigns/{id}/retry-failed",
        response_model=Transition,
        response_model_exclude_unset=True,
        responses=_errors(409, 413, 503),
    )
    def retry_failed(caller: Operator, cid: CampaignId, body: RetryFailedBody | None = None) -> dict[str, Any]:
        """Queue failed recipients again (optionally only some error codes) and send them."""
        api.ready()
        with api.db.begin() as conn:
            t, n = lifecycle.retry_failed(conn, caller.organization_id, cid, body.codes if body else None)
            audit(conn, caller, "retry-failed", cid, codes=body.codes if body else None, requeued=n)
        run_id = api.hand_to_prefect(caller.organization_id, cid)
        return _moved(cid, t, requeued=n, flow_run_id=run_id)

    @r.post(
        "/campaigns/{id}/schedule",
        response_model=Transition,
        response_model_exclude_unset=True,
        responses=_errors(409, 413),
    )
    def schedule_campaign(caller: Operator, cid: CampaignId, body: ScheduleBody | None = None) -> dict[str, Any]:
        """Schedule the campaign (its run waits under Upcoming in Prefect); no body: the time it was created with."""
        with api.db.begin() as conn:
            t = lifecycle.schedule(conn, caller.organization_id, cid, body.scheduled_at if body else None)
            campaign = lifecycle.get(conn, caller.organization_id, cid)
            audit(conn, caller, "schedule", cid, scheduled_at=campaign["scheduled_at"])
        run_id = services.follow_transition(api.db, caller.organization_id, cid, t, api.runs)  # Upcoming
        return _moved(cid, t, scheduled_at=campaign["scheduled_at"], **({"flow_run_id": run_id} if run_id else {}))

    @r.get("/campaigns/{id}/stats", response_model=Stats, responses=_errors())
    def campaign_stats(caller: Reader, cid: CampaignId) -> dict[str, Any]:
        """The seed's "4. Obter Estatísticas"."""
        return api.read(services.stats_of, caller, cid)

    @r.get("/campaigns/{id}/progress", response_model=Progress, responses=_errors())
    def campaign_progress(caller: Reader, cid: CampaignId) -> dict[str, Any]:
        """The seed's "3. Monitorar Progresso"."""
        return api.read(services.progress_of, caller, cid)

    @r.get("/campaigns/{id}/retry-stats", response_model=RetryStats, responses=_errors())
    def campaign_retry_stats(caller: Reader, cid: CampaignId) -> dict[str, Any]:
        """Retries: the policy, recipients by attempts, what waits and when, failures by code."""
        return api.read(services.retry_stats_of, caller, cid)

    @r.get("/campaigns/{id}/audit", response_model=list[AuditEntry], responses=_errors())
    def campaign_audit(caller: Reader, cid: CampaignId) -> list[dict[str, Any]]:
        """Who did what to the campaign through the API, oldest first: the user (a JWT's sub) and their role."""
        with api.db.connect() as conn:
            lifecycle.get(conn, caller.organization_id, cid)  # another organization's: "Campaign not found"
            return audit_log.of_campaign(conn, caller.organization_id, cid)

    @r.get("/campaigns/{id}/recipients", response_model=RecipientsPage, responses=_errors())
    def campaign_recipients(
        caller: Reader,
        cid: CampaignId,
        status: Annotated[str | None, Query(description="a recipient status, or replied")] = None,
        after: Annotated[str | None, Query(description="the previous page's next_cursor")] = None,
        page_size: Annotated[int, Query(description="1 to 1000")] = 100,
    ) -> dict[str, Any]:
        """Each recipient's status, a page at a time, oldest first."""
        with api.db.connect() as conn:
            return services.recipients_of(
                conn, caller.organization_id, cid, status or None, after=after or None, page_size=page_size
            )

    @r.get(
        "/campaigns/{id}/recipients.csv",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}, "description": "every matching recipient"}, **_errors(429)},
    )
    def campaign_recipients_csv(
        caller: Reader,
        cid: CampaignId,
        status: Annotated[str | None, Query(description="a recipient status, or replied")] = None,
    ) -> Response:
        """Every matching recipient as CSV, streamed (a million rows never sit in memory)."""
        return csv.response(caller.organization_id, cid, status or None)

    @n.get("/numbers/{id}/limits", response_model=NumberLimits, responses=_errors())
    def number_limits(caller: Reader, nid: NumberId) -> dict[str, Any]:
        """A number's rate, caps and business portfolio as they are in force."""
        with api.db.connect() as conn:
            return tenancy.number_limits(conn, caller.organization_id, nid)

    @n.put("/numbers/{id}/limits", response_model=NumberLimits, responses=_errors(413))
    def set_number_limits(body: NumberLimitsBody, caller: Admin, nid: NumberId) -> dict[str, Any]:
        """Change a number's rate, caps (null removes one) and portfolio; a preset applies first."""
        with api.db.begin() as conn:
            limits = tenancy.set_number_limits(conn, caller.organization_id, nid, body.changes(), body.preset)
            audit(conn, caller, "number-limits", number_id=nid, **body.model_dump(mode="json", exclude_unset=True))
            return limits

    @n.post("/numbers", status_code=201, response_model=Number, responses=_errors(413, 503))
    def create_number(body: NumberCreate, caller: Admin) -> dict[str, Any]:
        """Register a number (or update the one with this phone_number_id); its credentials go to its Prefect
        block, never to the database nor to any answer."""
        from blocks.numbers import add_number

        def secret(value: SecretStr | None) -> str:
            return value.get_secret_value() if value else ""

        with api.db.begin() as conn:
            # A number belongs to one organization: registering another's would route its contacts' replies
            # (signed by the platform's app) to this one too.
            if tenancy.number_held_elsewhere(conn, caller.organization_id, body.provider, body.phone_number_id):
                raise Conflict("phone_number_id: this number is registered by another organization")
            try:
                nid = add_number(
                    conn,
                    caller.organization_id,
                    provider=body.provider,
                    phone_number_id=body.phone_number_id,
                    token=secret(body.access_token),
                    app_secret=secret(body.app_secret),
                    verify_token=secret(body.verify_token),
                    api_base=body.api_base,
                    mps=body.mps,
                    display_phone_number=body.display_phone_number,
                    graph_version=body.graph_version,
                )
            except sa.exc.SQLAlchemyError:
                raise
            except Exception as exc:  # the block could not be saved: Prefect is away
                log.exception("saving the credentials block of a number failed")
                raise Unavailable(
                    "Prefect is not reachable: the number's credentials could not be stored", [type(exc).__name__]
                ) from None
            audit(conn, caller, "number-create", number_id=nid, phone_number_id=body.phone_number_id)
            return tenancy.get_number(conn, caller.organization_id, nid)

    @n.get("/numbers", response_model=list[Number], responses=_errors())
    def list_numbers(caller: Reader) -> list[dict[str, Any]]:
        """The organization's numbers, with their limits (never their credentials)."""
        with api.db.connect() as conn:
            return tenancy.list_numbers(conn, caller.organization_id)

    @c.post("/contacts", response_model=ImportReport, responses=_errors(413))
    def upsert_contacts(body: ContactsBody, caller: Operator) -> dict[str, Any]:
        """Create or update contacts by phone, as the CSV import does; each refused one named by its index."""
        records = [x.model_dump() for x in body.contacts]
        return imported(
            caller, "contacts", "contacts[{}]", lambda conn: import_records(conn, caller.organization_id, records, cc)
        )

    @c.post(
        "/contacts/import",
        response_model=ImportReport,
        responses=_errors(413),
        openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
    )
    def import_contacts_csv(request: Request, caller: Operator) -> dict[str, Any]:
        """A CSV file (phone,name,tags,opted_out,last_inbound_at and attribute columns), as `campaigns contacts
        import` takes it: good rows kept, each refused row named by its line (the header is line 1)."""
        raw: bytes = request._body  # read and size-checked by the route
        return imported(
            caller, "contacts-import", "line {}", lambda conn: import_csv(conn, caller.organization_id, raw, cc)
        )

    def imported(
        caller: Caller, action: str, at: str, run: Callable[[sa.Connection], ContactsImport]
    ) -> dict[str, Any]:
        """An import in one transaction with its audit row; a file or a body that cannot be imported is a 422."""
        try:
            with api.db.begin() as conn:
                report = run(conn)
                audit(conn, caller, action, imported=report.imported, rejected=len(report.errors))
        except ImportFileError as exc:
            raise Invalid(f"The contacts cannot be imported: {exc}") from None
        return _report(report, at)

    @r.get("/campaigns/{id}/preflight", response_model=PreflightReport, responses=_errors())
    def campaign_preflight(caller: Reader, cid: CampaignId) -> dict[str, Any]:
        """The seed's pre-launch checklist, run now without starting anything: each item with its result."""
        with api.db.connect() as conn:
            return services.preflight_of(conn, caller.organization_id, cid, api.credentials)

    return [r, n, c]


def default_health_checks(db: sa.Engine) -> dict[str, health.Check]:
    from prefect.settings import PREFECT_API_URL

    from campaigns.settings import get_settings

    def postgres() -> None:
        health.postgres(db)()
        if problem := schema_behind(db):
            raise RuntimeError(problem)

    return {
        "postgres": postgres,
        "redis": health.redis_at(get_settings().redis_url or ""),
        "prefect": health.prefect_at(PREFECT_API_URL.value() or ""),
    }


def create_app(
    launch: Launch | None = None,
    *,
    ready: Ready | None = None,
    runs: Runs | None = None,
    credentials: LoadCredentials | None = None,
    db: sa.Engine | None = None,
    max_body_bytes: int | None = None,
    jwt: JwtSettings | None = None,
    health_checks: dict[str, health.Check] | None = None,
) -> FastAPI:
    """The API app. Without `launch`, start and resume create runs of send-campaign/default in Prefect;
    `ready` (by default the launcher's own `ready`, if it has one) is asked first. `runs` (by default
    Prefect's) keeps Upcoming in step; `credentials` (by default from the number's Prefect block) reads a
    number's for a start's checklist. `jwt` (by default from the environment, API_JWT_*) accepts the main app's
    JWTs beside the opaque tokens."""
    from blocks.whatsapp import fresh_credentials
    from campaigns.settings import get_settings
    from campaigns.store.db import get_engine

    launch = launch or PrefectLauncher()
    settings = get_settings()
    db = db or get_engine()
    jwt = jwt or JwtSettings.from_environment()
    api = CampaignsApi(
        db,
        launch,
        ready or getattr(launch, "ready", None),
        runs or PrefectRuns(),
        credentials or fresh_credentials,
        JwtVerifier(jwt) if jwt else None,
    )
    # The docs page's Swagger UI is served from the package, not a CDN: it works on a machine without internet.
    app = FastAPIOffline(
        static_url=f"{PREFIX}/docs-static",
        title="PyTake Campaigns",
        version="1",
        description="WhatsApp campaigns for PyTake: create, start, watch and steer them.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operation ids a generated client reads well
    )
    app.state.campaigns = api
    csv = CsvExports(db, settings.api_max_csv_exports)
    ours = routers(api, csv, max_body_bytes or settings.api_max_body_bytes, settings.default_country_code)
    for router in ours:
        app.include_router(router)
    api_routes = [route for router in ours for route in router.routes if isinstance(route, APIRoute)]

    checks = health_checks if health_checks is not None else default_health_checks(db)

    scraped = metrics.registry(db, settings.redis_url or "")

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Prometheus text format: the send path's counters, campaigns by status, the ingestion lag."""
        return Response(metrics.exposition(scraped), media_type=metrics.CONTENT_TYPE)

    @app.get("/health", include_in_schema=False)
    def health_of_dependencies() -> Response:
        """Postgres, Redis and Prefect, each checked now: 503 naming what is down."""
        status, body = health.report(checks)
        return JSONResponse(body, status_code=status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = exc.headers
        if exc.status_code == 405:  # each method is a route of its own: Allow names them all, not the first's
            allowed = {m for r in api_routes if r.matches(request.scope)[0] != Match.NONE for m in r.methods or ()}
            headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
        return JSONResponse({"detail": exc.detail, "errors": []}, status_code=exc.status_code, headers=headers)

    app.add_exception_handler(HTTPException, http_error)
    return app
