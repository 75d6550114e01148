"""Per-contact statuses: what operators read when a campaign went wrong (the failures), page by page or as CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid

import pytest
import sqlalchemy as sa

from campaigns.control.services import export_recipients, recipients_of
from campaigns.errors import Invalid, NotFound
from campaigns.reporting.recipient_statuses import CSV_COLUMNS, export_csv, page
from campaigns.webhooks.ingest import ingest_pending
from tests.helpers import add_contacts, add_sandbox_number, cli, create_campaign, new_org, phones
from tests.helpers import run_campaign as run_flow

pytestmark = pytest.mark.flow  # every test runs a campaign through the send-campaign flow

SEED_KEYS = {"contact_name", "contact_phone", "status", "message_id", "attempts"}
SEED_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def run_campaign(db, org, sandbox, n: int = 20, **sandbox_config) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    """n contacts (+55119000000NN); numbers ending in 3 fail by webhook (131026), in 7 synchronously (100);
    one opted-out contact and one invalid phone are skipped. Returns the campaign and contact ids by phone."""
    sandbox.configure(
        rules=[
            {"match": "3$", "code": 131026, "where": "webhook"},
            {"match": "7$", "code": 100, "message": "(#100) Invalid parameter: to"},
        ],
        **sandbox_config,
    )
    number = add_sandbox_number(db, org, sandbox)
    rows = [{"phone": p, "name": f"Ana {i}"} for i, p in enumerate(phones(n))]
    rows += [{"phone": "+5511988887777", "name": "Bia", "opted_out": True}, {"phone": "oops", "name": "Caio"}]
    ids = add_contacts(db, org, rows)
    cid = create_campaign(db, org, number)
    assert run_flow(cid)["status"] == "completed"
    assert sandbox.drain_webhooks(timeout=20)
    ingest_pending(db)
    return cid, {row["phone"]: i for row, i in zip(rows, ids, strict=True)}


def all_pages(db, org, cid, status=None, page_size=7) -> list[dict]:
    pages, after = [], None
    while True:
        with db.connect() as conn:
            body = page(conn, org, cid, status, after=after, page_size=page_size)
        pages.append(body)
        after = body["next_cursor"]
        if after is None:
            return pages


def test_the_failed_filter_returns_exactly_the_failures_with_code_and_reason(db, org, sandbox):
    cid, ids = run_campaign(db, org, sandbox, reply_rate=1.0, delivered_rate=1.0)

    with db.connect() as conn:
        failed = page(conn, org, cid, "failed")
        skipped = page(conn, org, cid, "skipped")
        replied = page(conn, org, cid, "replied", page_size=1000)
        everyone = page(conn, org, cid, page_size=1000)

    failing = {p for p in phones(20) if p[-1] in "37"}
    assert set(failed["recipients"]) == {str(ids[p]) for p in failing}
    assert failed["total"] == 4 and failed["next_cursor"] is None and failed["status"] == "failed"
    by_webhook = failed["recipients"][str(ids["+5511900000003"])]
    assert set(by_webhook) >= SEED_KEYS
    assert by_webhook["status"] == "failed" and by_webhook["error_code"] == 131026 and by_webhook["error_message"]
    assert by_webhook["contact_name"] == "Ana 3" and by_webhook["contact_phone"] == "5511900000003"
    assert by_webhook["message_id"].startswith("wamid.")  # accepted, then failed by webhook
    assert [(a["attempt"], a["success"]) for a in by_webhook["attempts"]] == [(0, True)]
    assert SEED_TIME.match(by_webhook["failed_at"]) and SEED_TIME.match(by_webhook["attempts"][0]["timestamp"])
    refused = failed["recipients"][str(ids["+5511900000007"])]
    assert refused["error_code"] == 100 and "Invalid parameter" in refused["error_message"]
    assert refused["message_id"] is None
    assert refused["attempts"] == [
        {
            "attempt": 0,
            "success": False,
            "timestamp": refused["attempts"][0]["timestamp"],
            "error_code": 100,
            "error_message": refused["error_message"],
        }
    ]

    assert {k: v["skip_reason"] for k, v in skipped["recipients"].items()} == {
        str(ids["+5511988887777"]): "opt_out",
        str(ids["oops"]): "invalid_number",
    }
    assert all(v["attempts"] == [] and v["message_id"] is None for v in skipped["recipients"].values())

    assert set(replied["recipients"]) == {str(ids[p]) for p in phones(20) if p not in failing}
    assert replied["total"] == 16
    paged = [k for p in all_pages(db, org, cid, "replied", page_size=5) for k in p["recipients"]]
    assert len(paged) == len(set(paged)) == 16 and set(paged) == set(replied["recipients"])
    assert all(SEED_TIME.match(v["replied_at"]) for v in replied["recipients"].values())

    assert everyone["total"] == len(everyone["recipients"]) == 22
    delivered = everyone["recipients"][str(ids["+5511900000000"])]
    assert delivered["status"] in ("delivered", "read") and delivered["message_id"].startswith("wamid.")
    assert delivered["error_code"] is None and delivered["skip_reason"] is None
    assert [(a["attempt"], a["success"]) for a in delivered["attempts"]] == [(0, True)]
    assert SEED_TIME.match(delivered["sent_at"]) and SEED_TIME.match(delivered["delivered_at"])


def test_pages_return_every_recipient_exactly_once_while_statuses_change(db, org, sandbox):
    cid, ids = run_campaign(db, org, sandbox, n=40, delivered_rate=1.0, read_rate=0.0)

    seen: list[str] = []
    after = None
    for step in range(100):
        with db.connect() as conn:
            body = page(conn, org, cid, after=after, page_size=7)
        assert body["total"] == 42 and len(body["recipients"]) <= 7
        seen += list(body["recipients"])
        after = body["next_cursor"]
        if after is None:
            break
        if step == 1:  # statuses move under the reader (read receipts arrive): no row moves between pages
            with db.begin() as conn:
                conn.execute(
                    sa.text(
                        "update campaign_recipients set status = 'read', read_at = now() "
                        "where campaign_id = :c and status = 'delivered'"
                    ),
                    {"c": cid},
                )
    assert len(seen) == len(set(seen)) == 42
    assert set(seen) == {str(i) for i in ids.values()}
    assert len(all_pages(db, org, cid)) == 6  # 42 = 6 full pages of 7, and no empty page after them

    failed = all_pages(db, org, cid, "failed", page_size=1)
    assert [len(p["recipients"]) for p in failed] == [1] * 8 and {p["total"] for p in failed} == {8}
    assert len({k for p in failed for k in p["recipients"]}) == 8


def test_the_csv_export_has_a_header_and_one_line_per_matching_recipient(db, org, sandbox):
    cid, ids = run_campaign(db, org, sandbox)
    with db.begin() as conn:  # a contact named like a spreadsheet formula must not run as one
        conn.execute(
            sa.text("update contacts set name = '=HYPERLINK(\"x\")' where id = :i"), {"i": ids["+5511900000013"]}
        )

    out = io.BytesIO()
    with db.connect() as conn:
        written = export_csv(conn, org, cid, "failed", out)
    lines = out.getvalue().decode().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert written == len(rows) == len(lines) - 1 == 4
    assert {r["contact_id"] for r in rows} == {str(ids[p]) for p in phones(20) if p[-1] in "37"}
    assert {r["status"] for r in rows} == {"failed"} and {r["error_code"] for r in rows} == {"131026", "100"}
    assert all(r["error_message"] and SEED_TIME.match(r["failed_at"]) for r in rows)
    formula = next(r for r in rows if r["contact_id"] == str(ids["+5511900000013"]))
    assert formula["contact_name"] == '\'=HYPERLINK("x")' and formula["contact_phone"] == "5511900000013"
    assert json.loads(formula["attempts"])[0]["attempt"] == 0

    everything = io.BytesIO()
    with db.connect() as conn:
        assert export_recipients(conn, org, cid, None, everything) == 22
    assert len(list(csv.DictReader(io.StringIO(everything.getvalue().decode())))) == 22


def test_a_wrong_status_or_cursor_names_the_field(db, org, sandbox):
    cid, _ = run_campaign(db, org, sandbox, n=2)
    with db.connect() as conn:
        with pytest.raises(Invalid, match=r"status must be one of: pending, .*, replied \(got 'failures'\)"):
            page(conn, org, cid, "failures")
        with pytest.raises(Invalid, match="status must be one of"):
            export_csv(conn, org, cid, "FAILED", io.BytesIO())
        with pytest.raises(Invalid, match="page_size must be between 1 and 1000"):
            page(conn, org, cid, page_size=0)
        with pytest.raises(Invalid, match="after must be a cursor"):
            page(conn, org, cid, after="abc")


def test_another_organization_sees_nothing(db, org, sandbox):
    cid, _ = run_campaign(db, org, sandbox, n=3)
    other = new_org(db, "other")

    out = io.BytesIO()
    with db.connect() as conn:
        body = page(conn, other, cid)
        assert page(conn, other, cid, "replied")["recipients"] == {}
        assert page(conn, other, cid, "failed")["total"] == 0
        assert export_csv(conn, other, cid, None, out) == 0
        with pytest.raises(NotFound, match="Campaign not found"):
            recipients_of(conn, other, cid)
        with pytest.raises(NotFound, match="Campaign not found"):
            export_recipients(conn, other, cid, "failed", io.BytesIO())
        assert page(conn, org, cid)["total"] == 5
    assert body["total"] == 0 and body["recipients"] == {} and body["next_cursor"] is None
    assert out.getvalue().decode().splitlines() == [",".join(CSV_COLUMNS)]


def test_the_command_line_lists_pages_and_exports_failures(db, org, sandbox, tmp_path):
    cid, ids = run_campaign(db, org, sandbox, n=10)

    table = cli("recipients", str(cid), "--status", "failed")
    assert table.stdout.splitlines()[0].split() == ["CONTACT", "NAME", "PHONE", "STATUS", "TRIES", "DETAIL"]
    assert str(ids["+5511900000007"]) in table.stdout and "Invalid parameter" in table.stdout
    assert "2 of 2 recipients" in table.stderr

    first = json.loads(cli("recipients", str(cid), "--org", str(org), "--page-size", "5", "--json").stdout)
    assert first["total"] == 12 and len(first["recipients"]) == 5 and first["next_cursor"]
    assert all(set(v) >= SEED_KEYS for v in first["recipients"].values())
    second = cli("recipients", str(cid), "--page-size", "5", "--after", first["next_cursor"], "--json")
    assert not set(json.loads(second.stdout)["recipients"]) & set(first["recipients"])
    assert "next page: --after" not in cli("recipients", str(cid), "--page-size", "50").stderr

    target = tmp_path / "failures.csv"
    exported = cli("recipients", str(cid), "--status", "failed", "--csv", str(target))
    assert exported.stdout == "" and "exported 2 recipients" in exported.stderr
    assert len(target.read_text().splitlines()) == 3 and not (tmp_path / "failures.csv.part").exists()
    stdout_csv = cli("recipients", str(cid), "--csv", "-").stdout
    assert stdout_csv.splitlines()[0] == ",".join(CSV_COLUMNS) and len(stdout_csv.splitlines()) == 13

    wrong = cli("recipients", str(cid), "--status", "bounced", check=False)
    assert wrong.returncode == 1 and "status must be one of" in wrong.stderr and "bounced" in wrong.stderr
    other_org = new_org(db, "someone-else")
    other = cli("recipients", str(cid), "--org", str(other_org), "--csv", "-", check=False)
    assert other.returncode == 1 and "Campaign not found" in other.stderr and other.stdout == ""
