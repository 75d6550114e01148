"""The API against its own OpenAPI schema, property-based (schemathesis over real HTTP, real Postgres).

For every operation in /api/v1/openapi.json, inputs generated from the schema and deliberately outside it
(deep JSON, NUL characters, integers past int4, huge paging values, wrong types): no answer is a 500, every
answer's status, content type and body are the ones the schema declares, and a request without a token is
refused. Path ids are the organization's own campaign (a fresh one each case) and number, so the
operations reach the domain instead of stopping at "not found".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import definitions
from schemathesis.specs.openapi.checks import positive_data_acceptance

from campaigns import api_tokens
from campaigns.api import create_app
from campaigns.control import lifecycle
from campaigns.control.models import CampaignCreate
from campaigns.infra.asgi_thread import ThreadedServer
from tests.helpers import add_contacts, add_sandbox_number, phones

BODY = {"name": "Schema", "message_type": "text", "message_content": {"text": "Olá {{contact.name}}"}}


@dataclass
class Api:
    url: str
    token: str
    number: uuid.UUID
    new_campaign: Callable[[], uuid.UUID]


@pytest.fixture
def api(db, org, sandbox) -> Iterator[Api]:
    server = ThreadedServer(create_app(lambda _: "run-1", ready=lambda: None, db=db)).start()
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "inbound_hours_ago": 1} for p in phones(3)])
    with db.begin() as conn:
        token = api_tokens.issue(conn, org, "org_admin")[1]

    def new_campaign() -> uuid.UUID:
        with db.begin() as conn:
            return lifecycle.create(conn, org, CampaignCreate(**BODY, whatsapp_number_id=number))

    TOKEN["value"] = token
    yield Api(server.url, token, number, new_campaign)
    server.stop()


def _schema() -> dict:
    """The schema the app serves, built without a database (an engine that never connects)."""
    app = create_app(
        lambda _: "",
        ready=lambda: None,
        runs=object(),
        credentials=lambda _: None,
        db=sa.create_engine("postgresql+psycopg://"),
    )
    return app.openapi()


schema = schemathesis.openapi.from_dict(_schema())
TOKEN: dict[str, str] = {}  # the running test's token, for the auth below


@schema.auth(refresh_interval=None)
class BearerToken:
    """The organization's org_admin token on every case, except where schemathesis leaves it out on purpose
    (to check that a request without one is refused)."""

    def get(self, case: Any, ctx: Any) -> str:
        return "the running test's"  # read in `set`: each test has its own organization and token

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN.get('value', '')}"}


def _is_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and bool(uuid.UUID(value))
    except ValueError:
        return False


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_500_and_every_answer_is_the_one_declared(case, api: Api) -> None:
    ids = case.path_parameters or {}
    if "id" in ids:
        ids["id"] = str(api.number if case.path.startswith("/api/v1/numbers/") else api.new_campaign())
    if isinstance(case.body, dict) and _is_uuid(case.body.get("whatsapp_number_id")):
        case.body["whatsapp_number_id"] = str(api.number)  # the organization's own, so the rest is checked
    # The schema says what each field may hold; the domain refuses more (a text message needs its text, a
    # number's limits must fit Meta's): a 4xx for schema-valid input is the contract, not a failure.
    if (case.headers or {}).get("Authorization") == "Bearer ":  # an example made while collecting, before the token
        case.headers["Authorization"] = f"Bearer {api.token}"
    case.call_and_validate(base_url=api.url, excluded_checks=[positive_data_acceptance])


def test_the_schema_is_served_and_documents_every_route(api: Api) -> None:
    """Every API route is in the schema (and nothing the app serves under /api/v1 is left out of it)."""
    doc = httpx.get(f"{api.url}/api/v1/openapi.json").json()
    assert doc == _schema()
    assert doc["openapi"].startswith("3.1")
    problems = [str(e) for e in definitions.OPENAPI_31_VALIDATOR.iter_errors(doc)]  # the OpenAPI 3.1 meta-schema
    assert not problems, problems
    assert httpx.get(f"{api.url}/api/v1/docs").status_code == 200
    served = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert ("post", "/api/v1/campaigns") in served and ("get", "/api/v1/numbers/{id}/limits") in served
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op.get("security"), f"{method} {path} is not behind a token"
            assert "422" in op["responses"] and "401" in op["responses"], (method, path)
