"""Hostile or odd input to the HTTP API and the CLI: a 4xx naming the field, never a 500 or a traceback."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from campaigns import api_tokens
from campaigns.api import create_app
from campaigns.infra.asgi_thread import ThreadedServer
from campaigns.store.schema import INT4_MAX
from tests.helpers import add_sandbox_number, cli, org_name

BODY = {"name": "Hostile", "message_type": "text", "message_content": {"text": "Olá {{contact.name}}"}}


@pytest.fixture
def api(db, org):
    server = ThreadedServer(create_app(lambda _: "never", ready=lambda: None, db=db)).start()
    with db.begin() as conn:
        token = api_tokens.issue(conn, org, "org_admin")[1]
    with httpx.Client(
        base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        yield http
    server.stop()


def _refused(r: httpx.Response, field: str) -> None:
    assert r.status_code in (400, 422), (r.status_code, r.text)
    assert field in r.json()["detail"], r.text
    assert "Traceback" not in r.text


def test_deep_json_is_refused_naming_the_depth(api, db, org, sandbox):
    number = str(add_sandbox_number(db, org, sandbox))
    deep = "[" * 100_000 + "]" * 100_000
    _refused(api.post("/campaigns", content=deep), "nested")
    nested: object = "x"
    for _ in range(200):  # under Python's recursion limit, over what any campaign body needs
        nested = {"a": nested}
    body = {**BODY, "whatsapp_number_id": number, "message_content": {"text": "Oi", "extra": nested}}
    _refused(api.post("/campaigns", json=body), "nested")


def test_nul_bad_unicode_and_nan_anywhere_in_a_body_are_refused_naming_the_field(api, db, org, sandbox):
    number = str(add_sandbox_number(db, org, sandbox))
    _refused(api.post("/campaigns", json={**BODY, "whatsapp_number_id": number, "name": "a\x00b"}), "name")
    _refused(api.post("/campaigns", json={**BODY, "whatsapp_number_id": number, "description": "d\x00"}), "description")
    content = {"text": "Oi", "footer\x00": "x"}
    _refused(
        api.post("/campaigns", json={**BODY, "whatsapp_number_id": number, "message_content": content}),
        "message_content",
    )
    lone_surrogate = b'{"name": "\\ud800", "whatsapp_number_id": "%s"}' % number.encode()
    _refused(api.post("/campaigns", content=lone_surrogate), "name")
    nan = json.dumps({**BODY, "whatsapp_number_id": number, "message_content": {"text": "Oi", "x": float("nan")}})
    _refused(api.post("/campaigns", content=nan), "message_content.x")
    created = api.post("/campaigns", json={**BODY, "whatsapp_number_id": number})
    assert created.status_code == 201, created.text
    _refused(api.patch(f"/campaigns/{created.json()['id']}", json={"name": "\x00"}), "name")


def test_numbers_past_int4_and_huge_paging_are_refused_naming_the_field(api, db, org, sandbox):
    number = str(add_sandbox_number(db, org, sandbox))
    for field in ("per_minute", "per_hour", "per_day", "mps"):
        _refused(api.put(f"/numbers/{number}/limits", json={field: INT4_MAX + 1}), field)
    assert api.put(f"/numbers/{number}/limits", json={"per_day": INT4_MAX}).status_code == 200
    _refused(api.get("/campaigns", params={"skip": 10**30}), "skip")
    _refused(api.get("/campaigns", params={"skip": INT4_MAX + 1}), "skip")
    _refused(api.get("/campaigns", params={"status": "running\x00"}), "status")
    created = api.post("/campaigns", json={**BODY, "whatsapp_number_id": number}).json()
    _refused(api.get(f"/campaigns/{created['id']}/recipients", params={"after": 10**30}), "after")
    _refused(api.get(f"/campaigns/{created['id']}/recipients", params={"after": "1\x00"}), "after")
    with db.begin() as conn:  # a completed campaign with a failure, so retry-failed reads its codes
        conn.execute(sa.text("update campaigns set status = 'completed' where id = :c"), {"c": created["id"]})
    for codes in ([INT4_MAX + 1], [-(2**40)]):
        _refused(api.post(f"/campaigns/{created['id']}/retry-failed", json={"codes": codes}), "codes")
    _refused(api.post(f"/campaigns/{created['id']}/retry-failed", json={"codes": [True]}), "codes")


def test_the_command_line_refuses_the_same_values_without_a_traceback(tmp_path: Path, db, org, sandbox):
    name = org_name(db, org)
    number = str(add_sandbox_number(db, org, sandbox))
    body = tmp_path / "c.json"
    body.write_text(json.dumps({**BODY, "whatsapp_number_id": number, "name": "a\x00b"}))
    for args, field in [
        (("create", str(body), "--org", name), "name"),
        (("list", "--org", name, "--skip", str(10**30)), "skip"),
        (("numbers", "limits", number, "--org", name, "--per-day", str(INT4_MAX + 1)), "per_day"),
    ]:
        r = cli(*args, check=False)
        assert r.returncode in (1, 2), r
        assert "Traceback" not in r.stderr and field in r.stderr, r.stderr
    body.write_text("[" * 100_000 + "]" * 100_000)
    r = cli("create", str(body), "--org", name, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nested" in r.stderr, r.stderr


def test_many_slow_csv_exports_never_starve_the_api(api, db, org, sandbox):
    """Clients that open the export and never read: the API still answers everything else, and exports past
    the bound are told to come back (429) instead of taking a database connection each."""
    number = str(add_sandbox_number(db, org, sandbox))
    cid = api.post("/campaigns", json={**BODY, "whatsapp_number_id": number}).json()["id"]
    with db.begin() as conn:  # 20 MB of CSV: more than the sockets buffer, so the COPY waits on each client
        conn.execute(
            sa.text("""
            insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, error_message)
            select :c, :o, gen_random_uuid(), '+5511' || g, 'failed', repeat('x', 2000)
            from generate_series(1, 10000) g"""),
            {"c": cid, "o": org},
        )
    headers = dict(api.headers)
    base = str(api.base_url)
    slow: list[httpx.Client] = []
    statuses: list[int] = []
    try:
        for _ in range(40):  # more than the engine's pool (and its overflow) holds
            c = httpx.Client(base_url=base, headers=headers, timeout=30)
            slow.append(c)
            r = c.send(c.build_request("GET", f"/campaigns/{cid}/recipients.csv"), stream=True)
            statuses.append(r.status_code)
        assert 200 in statuses and 429 in statuses, statuses
        refused = next(i for i, s in enumerate(statuses) if s == 429)
        assert statuses[refused:].count(200) == 0  # the bound holds while the slow ones stay open
        done = threading.Event()
        answers: list[int] = []

        def others() -> None:
            for _ in range(5):
                answers.append(api.get(f"/campaigns/{cid}").status_code)
                answers.append(api.get("/campaigns").status_code)
            done.set()

        threading.Thread(target=others, daemon=True).start()
        assert done.wait(60), "the API stopped answering while slow exports were open"
        assert answers == [200] * 10
    finally:
        for c in slow:
            c.close()


def test_ids_in_paths_are_not_found_not_500(api):
    assert api.get(f"/campaigns/{uuid.uuid4()}").status_code == 404
    assert api.get("/campaigns/not-a-uuid%00").status_code == 404
