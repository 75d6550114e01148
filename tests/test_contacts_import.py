from __future__ import annotations

import pytest
import sqlalchemy as sa

from campaigns.contacts import ImportFileError, import_csv
from campaigns.phones import normalise

CSV = """phone,name,tags,opted_out,last_inbound_at,city
+55 (11) 99999-0001,Ana,vip|sp,false,2026-11-25T10:00:00Z,Recife
12,Bad,,,,
11999990002,Bruno,,no,,
0055 11 99999-0003,Carla,,yes,,
+55 11 99999-0001,Ana again,,,,
5511999990004,Dani,,maybe,,
5511999990005,Edu,,,yesterday,
"""


def test_normalise_to_e164():
    assert normalise("+55 (11) 99999-0001") == "+5511999990001"
    assert normalise("11999990002") == "+5511999990002"
    assert normalise("5511999990002") == "+5511999990002"
    assert normalise("0044 20 7946 0958") == "+442079460958"
    assert normalise("12") is None
    assert normalise("129399") is None  # +55 129399: too short for a Brazilian number (area code + 8-9 digits)
    assert normalise("+55 11 99999-00011") is None  # one digit too many
    assert normalise("+1 415 555 0100") == "+14155550100" and normalise("+1 555 0100") is None
    assert normalise("abc") is None


def test_good_rows_are_kept_and_bad_rows_reported_by_line(db, org):
    with db.begin() as conn:
        report = import_csv(conn, org, CSV.encode())
    assert report.inserted == 3
    assert report.errors == [
        (3, "invalid phone '12'"),
        (6, "duplicate phone (first seen on line 2)"),
        (7, "opted_out must be true/false, got 'maybe'"),
        (8, "last_inbound_at is not a date/time: 'yesterday'"),
    ]
    with db.connect() as conn:
        rows = {r.phone: r for r in conn.execute(sa.text(
            "select phone, name, tags, attributes, opted_out_at, last_inbound_at from contacts "
            "where organization_id = :o"), {"o": org})}
    assert set(rows) == {"+5511999990001", "+5511999990002", "+5511999990003"}
    ana = rows["+5511999990001"]
    assert ana.tags == ["vip", "sp"] and ana.attributes == {"city": "Recife"}
    assert ana.last_inbound_at.isoformat().startswith("2026-11-25T10:00")
    assert rows["+5511999990003"].opted_out_at is not None
    assert rows["+5511999990002"].opted_out_at is None


def test_reimport_updates_instead_of_duplicating(db, org):
    with db.begin() as conn:
        import_csv(conn, org, b"phone,name\n+5511999990001,Ana\n")
        report = import_csv(conn, org, b"phone,name,opted_out\n+5511999990001,Ana Maria,true\n+5511999990009,Z,\n")
    assert (report.inserted, report.updated) == (1, 1)
    with db.connect() as conn:
        row = conn.execute(sa.text("select count(*), max(name), bool_or(opted_out_at is not null) from contacts "
                                   "where organization_id = :o and phone = '+5511999990001'"), {"o": org}).one()
    assert tuple(row) == (1, "Ana Maria", True)


def test_a_file_without_a_phone_column_is_refused_naming_it(db, org):
    with db.begin() as conn, pytest.raises(ImportFileError, match="missing column 'phone'"):
        import_csv(conn, org, b"telefone,nome\n1,2\n")
