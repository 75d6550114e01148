"""The main app's own tokens: JWTs signed with a shared secret (HS256) or keys from its JWKS (RS256, EdDSA),
one per user, over real HTTP and real Postgres. Who acted is recorded and readable; every endpoint admits
exactly the roles of the seed's table; a token that is expired, meant for another audience, badly signed or
unsigned is refused; and an organization sees nothing of another's."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from campaigns import api_tokens
from campaigns.api import create_app
from campaigns.api.auth import JwtSettings
from campaigns.control.models import SEED_EXAMPLE
from campaigns.infra.asgi_thread import ThreadedServer
from tests.helpers import add_contacts, add_sandbox_number, phones

SECRET = "main-app-shared-secret-" + "x" * 20
AUD, ISS = "pytake-campaigns", "https://app.pytake.example"
BODY = {k: v for k, v in SEED_EXAMPLE.items() if k != "whatsapp_number_id"}

# The seed's permissions table, endpoint by endpoint (README "HTTP API"): who may, every other role is 403.
ANY, OPERATE, ADMIN = ("org_admin", "agent", "viewer"), ("org_admin", "agent"), ("org_admin",)
PERMISSIONS = {
    ("post", "/api/v1/campaigns"): OPERATE,
    ("get", "/api/v1/campaigns"): ANY,
    ("get", "/api/v1/campaigns/{id}"): ANY,
    ("patch", "/api/v1/campaigns/{id}"): OPERATE,
    ("delete", "/api/v1/campaigns/{id}"): ADMIN,
    ("post", "/api/v1/campaigns/{id}/start"): OPERATE,
    ("post", "/api/v1/campaigns/{id}/pause"): OPERATE,
    ("post", "/api/v1/campaigns/{id}/cancel"): ADMIN,
    ("post", "/api/v1/campaigns/{id}/resume"): OPERATE,
    ("post", "/api/v1/campaigns/{id}/retry-failed"): OPERATE,
    ("post", "/api/v1/campaigns/{id}/schedule"): OPERATE,
    ("get", "/api/v1/campaigns/{id}/stats"): ANY,
    ("get", "/api/v1/campaigns/{id}/progress"): ANY,
    ("get", "/api/v1/campaigns/{id}/retry-stats"): ANY,
    ("get", "/api/v1/campaigns/{id}/audit"): ANY,
    ("get", "/api/v1/campaigns/{id}/recipients"): ANY,
    ("get", "/api/v1/campaigns/{id}/recipients.csv"): ANY,
    ("get", "/api/v1/numbers/{id}/limits"): ANY,
    ("put", "/api/v1/numbers/{id}/limits"): ADMIN,
    ("get", "/api/v1/campaigns/{id}/preflight"): ANY,
    ("post", "/api/v1/numbers"): ADMIN,
    ("get", "/api/v1/numbers"): ANY,
    ("post", "/api/v1/contacts"): OPERATE,
    ("post", "/api/v1/contacts/import"): OPERATE,
}


def mint(key: Any = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token as the main app mints one: its user, its organization's id, the user's role, 5 minutes."""
    now = int(time.time())
    body = {"sub": "user-1", "org": "acme-1", "role": "org_admin", "aud": AUD, "iss": ISS, "iat": now}
    body["exp"] = now + 300
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers=headers)


@pytest.fixture
def api(db) -> Iterator[Callable[..., httpx.Client]]:
    """The API accepting the main app's HS256 tokens; returns a client maker: client(token)."""
    server = ThreadedServer(
        create_app(lambda _: "run-1", ready=lambda: None, db=db, jwt=JwtSettings(SECRET, None, AUD, ISS, 30))
    ).start()
    clients: list[httpx.Client] = []

    def client(token: str) -> httpx.Client:
        clients.append(httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30))
        return clients[-1]

    yield client
    for c in clients:
        c.close()
    server.stop()


def org_of(db: sa.Engine, external_id: str) -> uuid.UUID | None:
    with db.connect() as conn:
        return conn.execute(sa.text("select id from organizations where external_id = :e"), {"e": external_id}).scalar()


def test_a_users_token_acts_for_its_organization_made_on_first_use_and_the_audit_names_the_user(db, sandbox, api):
    ext = f"acme-{uuid.uuid4().hex[:8]}"
    ana = api(mint(sub="ana@acme", org=ext, org_name="Acme Ltda"))
    assert ana.get("/api/v1/campaigns").json()["total"] == 0  # the organization exists from now on
    org = org_of(db, ext)
    assert org is not None
    with db.connect() as conn:
        assert conn.execute(sa.text("select name from organizations where id = :o"), {"o": org}).scalar() == "Acme Ltda"
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "inbound_hours_ago": 1} for p in phones(2)])
    cid = ana.post("/api/v1/campaigns", json={**BODY, "whatsapp_number_id": str(number)}).json()["id"]
    bruno = api(mint(sub="bruno@acme", org=ext, role="agent"))
    assert bruno.patch(f"/api/v1/campaigns/{cid}", json={"name": "Natal"}).status_code == 200
    assert bruno.post(f"/api/v1/campaigns/{cid}/start").status_code == 200
    assert bruno.post(f"/api/v1/campaigns/{cid}/pause").status_code == 200
    assert ana.post(f"/api/v1/campaigns/{cid}/cancel").status_code == 200
    trail = api(mint(sub="carla@acme", org=ext, role="viewer")).get(f"/api/v1/campaigns/{cid}/audit").json()
    assert [(e["actor"], e["role"], e["action"]) for e in trail] == [
        ("ana@acme", "org_admin", "create"),
        ("bruno@acme", "agent", "update"),
        ("bruno@acme", "agent", "start"),
        ("bruno@acme", "agent", "pause"),
        ("ana@acme", "org_admin", "cancel"),
    ]
    assert trail[1]["details"] == {"fields": ["name"]} and trail[2]["details"] == {"total_recipients": 2}
    assert org_of(db, ext) == org  # the second user's token found the same organization


def test_refused_tokens_say_why_and_change_nothing(db, api):
    ext = f"refused-{uuid.uuid4().hex[:8]}"
    now = int(time.time())
    refused = {
        "expired": mint(org=ext, exp=now - 120),
        "another audience": mint(org=ext, aud="another-api"),
        "another issuer": mint(org=ext, iss="https://evil.example"),
        "another secret": mint("not-the-secret-" + "y" * 20, org=ext),
        "no expiry": mint(org=ext, exp=None),
        "no user": mint(org=ext, sub=None),
        "an unknown role": mint(org=ext, role="owner"),
        "unsigned (alg none)": mint(None, "none", org=ext),
        "not a token": "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
    }
    for why, token in refused.items():
        r = api(token).get("/api/v1/campaigns")
        assert r.status_code == 401, (why, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and r.json()["detail"], why
        assert token not in r.text
    assert "expired" in api(refused["expired"]).get("/api/v1/campaigns").json()["detail"]
    assert "aud" in api(refused["another audience"]).get("/api/v1/campaigns").json()["detail"]
    assert "'none'" in api(refused["unsigned (alg none)"]).get("/api/v1/campaigns").json()["detail"]
    assert org_of(db, ext) is None  # no refused token made its organization
    late = mint(org=ext, exp=now - 10)  # within the 30 s of clock skew allowed
    assert api(late).get("/api/v1/campaigns").status_code == 200


def test_every_endpoint_admits_exactly_the_roles_of_the_seeds_table(db, sandbox, api):
    ext = f"roles-{uuid.uuid4().hex[:8]}"
    admin = api(mint(org=ext))
    admin.get("/api/v1/campaigns")
    org = org_of(db, ext)
    assert org is not None
    number = add_sandbox_number(db, org, sandbox)
    schema = admin.get("/api/v1/openapi.json").json()
    documented = {(m, p) for p, item in schema["paths"].items() for m in item}
    assert documented == set(PERMISSIONS), "a route without its row in PERMISSIONS, or a row without its route"
    for role in ANY:
        http = api(mint(org=ext, role=role, sub=f"{role}-user"))
        for (method, path), allowed in PERMISSIONS.items():
            cid = admin.post("/api/v1/campaigns", json={**BODY, "whatsapp_number_id": str(number)}).json()["id"]
            url = path.replace("{id}", str(number) if "/numbers/" in path else cid)
            r = http.request(method.upper(), url, json={} if method in ("post", "put", "patch") else None)
            if role in allowed:
                assert r.status_code not in (401, 403), (role, method, path, r.text)
            else:
                assert r.status_code == 403, (role, method, path, r.text)
                assert role in r.json()["detail"]


def test_another_organizations_campaign_is_not_found(db, sandbox, api):
    mine, theirs = f"mine-{uuid.uuid4().hex[:8]}", f"theirs-{uuid.uuid4().hex[:8]}"
    admin = api(mint(org=mine))
    admin.get("/api/v1/campaigns")
    number = add_sandbox_number(db, org_of(db, mine), sandbox)
    cid = admin.post("/api/v1/campaigns", json={**BODY, "whatsapp_number_id": str(number)}).json()["id"]
    other = api(mint(org=theirs))
    for method, path in PERMISSIONS:
        if "{id}" in path:
            url = path.replace("{id}", str(number) if "/numbers/" in path else cid)
            r = other.request(method.upper(), url, json={} if method in ("post", "put", "patch") else None)
            assert r.status_code == 404, (method, path, r.text)
    assert other.get("/api/v1/campaigns").json()["total"] == 0


class Jwks:
    """The main app's JWKS endpoint, over real HTTP; its keys can be rotated while the API runs."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0

        async def serve(_: Any) -> JSONResponse:
            self.fetches += 1
            return JSONResponse({"keys": self.keys})

        self.server = ThreadedServer(Starlette(routes=[Route("/.well-known/jwks.json", serve)])).start()
        self.url = self.server.url + "/.well-known/jwks.json"

    def publish(self, kid: str, private: Any) -> None:
        public = json.loads(jwt.algorithms.get_default_algorithms()[_alg(private)].to_jwk(private.public_key()))
        self.keys.append({**public, "kid": kid, "use": "sig"})


def _alg(key: Any) -> str:
    return "EdDSA" if isinstance(key, ed25519.Ed25519PrivateKey) else "RS256"


def test_keys_from_the_main_apps_jwks_rs256_and_eddsa_cached_and_rotated(db):
    jwks = Jwks()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.publish("rsa-1", rsa_key)
    server = ThreadedServer(
        create_app(
            lambda _: "run-1",
            ready=lambda: None,
            db=db,
            jwt=JwtSettings(None, jwks.url, AUD, ISS, jwks_refetch_seconds=0.5),
        )
    ).start()
    try:
        ext = f"jwks-{uuid.uuid4().hex[:8]}"

        def get(token: str) -> httpx.Response:
            return httpx.get(server.url + "/api/v1/campaigns", headers={"Authorization": f"Bearer {token}"})

        for _ in range(3):
            assert get(mint(rsa_key, "RS256", {"kid": "rsa-1"}, org=ext)).status_code == 200
        assert jwks.fetches == 1  # cached
        ed_key = ed25519.Ed25519PrivateKey.generate()
        jwks.publish("ed-2", ed_key)  # the main app rotates: a new key appears, then tokens signed with it
        time.sleep(0.6)  # past the refetch interval since the first fetch
        assert get(mint(ed_key, "EdDSA", {"kid": "ed-2"}, org=ext)).status_code == 200
        assert jwks.fetches == 2  # a key id not seen yet fetched the set again
        time.sleep(0.6)
        r = get(mint(ed25519.Ed25519PrivateKey.generate(), "EdDSA", {"kid": "ed-3"}, org=ext))
        assert r.status_code == 401 and "JWKS" in r.json()["detail"]  # a key the main app never published
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        r = get(mint(stranger, "RS256", {"kid": "rsa-1"}, org=ext))  # a known kid, another key
        assert r.status_code == 401 and "Signature" in r.json()["detail"]
        # A published RSA key's id on a token that says ES256: refused (401), not a 500.
        ec_key = ec.generate_private_key(ec.SECP256R1())
        r = get(mint(ec_key, "ES256", {"kid": "rsa-1"}, org=ext))
        assert r.status_code == 401 and "RS256" in r.json()["detail"]
        # An HS256 token whose "secret" is the public key: refused, this server takes no shared secret.
        assert get(mint(SECRET, "HS256", org=ext)).status_code == 401
    finally:
        server.stop()
        jwks.server.stop()


def test_opaque_tokens_for_scripts_can_expire(db, org, api):
    with db.begin() as conn:
        _, live = api_tokens.issue(conn, org, "viewer", datetime.now(UTC) + timedelta(hours=1))
        _, gone = api_tokens.issue(conn, org, "viewer", datetime.now(UTC) - timedelta(seconds=1))
    assert api(live).get("/api/v1/campaigns").status_code == 200
    r = api(gone).get("/api/v1/campaigns")
    assert r.status_code == 401 and r.json()["detail"] == "Invalid, revoked or expired token"
