from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.audience.contacts import ImportFileError, import_csv

CSV = """phone,name,tags,opted_out,last_inbound_at,city
+55 (11) 99999-0001,Ana,vip|sp,false,2026-11-25T10:00:00Z,Recife
12,Bad,,,,
11999990002,Bruno,,no,,
0055 11 99999-0003,Carla,,yes,,
+55 11 99999-0001,Ana again,,,,
5511999990004,Dani,,maybe,,
5511999990005,Edu,,,yesterday,
"""


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
        rows = {
            r.phone: r
            for r in conn.execute(
                sa.text(
                    "select phone, name, tags, attributes, opted_out_at, last_inbound_at from contacts "
                    "where organization_id = :o"
                ),
                {"o": org},
            )
        }
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
        row = conn.execute(
            sa.text(
                "select count(*), max(name), bool_or(opted_out_at is not null) from contacts "
                "where organization_id = :o and phone = '+5511999990001'"
            ),
            {"o": org},
        ).one()
    assert tuple(row) == (1, "Ana Maria", True)


def test_a_file_without_a_phone_column_is_refused_naming_it(db, org):
    with db.begin() as conn, pytest.raises(ImportFileError, match="missing column 'phone'"):
        import_csv(conn, org, b"telefone,nome\n1,2\n")


def _contacts(db, org) -> dict[str, sa.Row]:
    with db.connect() as conn:
        return {
            r.phone: r
            for r in conn.execute(
                sa.text("select phone, name, tags, attributes from contacts where organization_id = :o"), {"o": org}
            )
        }


def test_headers_that_collide_once_normalised_are_refused_naming_them(db, org):
    for header in (b"phone,Phone ,name", b"phone,name,NAME"):
        with db.begin() as conn, pytest.raises(ImportFileError, match="more than once"):
            import_csv(conn, org, header + b"\n+5511999990001,a,b\n")


def test_a_tag_ending_in_a_backslash_or_quoted_is_kept_as_written(db, org):
    with db.begin() as conn:
        report = import_csv(conn, org, b'phone,tags\n+5511999990001,"vip\\|a""b|c\\d"\n+5511999990002,plain\\\n')
    assert (report.inserted, report.errors) == (2, [])
    rows = _contacts(db, org)
    assert rows["+5511999990001"].tags == ["vip\\", 'a"b', "c\\d"] and rows["+5511999990002"].tags == ["plain\\"]


def test_a_nul_in_a_cell_rejects_only_its_row_with_its_line(db, org):
    data = b"phone,name,city\n+5511999990001,Ana,Recife\n+5511999990002,B\x00o,Natal\n+5511999990003,Caio,Sao\x00\n"
    with db.begin() as conn:
        report = import_csv(conn, org, data)
    assert report.inserted == 1
    assert [line for line, _ in report.errors] == [3, 4]
    assert "NUL" in report.errors[0][1] and "name" in report.errors[0][1] and "city" in report.errors[1][1]


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16", "utf-8-sig", "utf-16-be"])
def test_latin1_and_utf16_files_are_read_with_their_accents(db, org, encoding):
    text = "phone,name,city\n+5511999990001,João,São Paulo\n+5511999990002,Zé,Maceió\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = "\ufeff".encode("utf-16-be") + data  # a big-endian byte order mark
    with db.begin() as conn:
        report = import_csv(conn, org, data)
    assert (report.inserted, report.errors) == (2, [])
    rows = _contacts(db, org)
    assert rows["+5511999990001"].name == "João" and rows["+5511999990002"].attributes == {"city": "Maceió"}


def test_utf16_without_a_byte_order_mark_is_refused_saying_so(db, org):
    with db.begin() as conn, pytest.raises(ImportFileError, match="UTF-16"):
        import_csv(conn, org, "phone,name\n+5511999990001,Ana\n".encode("utf-16-le"))


def test_broken_quoting_rejects_its_lines_and_keeps_the_good_rows(db, org):
    data = (
        b"phone,name,city\n"
        b"+5511999990001,Ana,Recife\n"
        b'+5511999990002,"Bo,Natal\n'  # a quote never closed
        b"+5511999990003,Caio,Salvador\n"
        b'+5511999990004,"Di"a,Belem\n'  # text after the closing quote
        b"+5511999990005,Edu,Recife,extra\n"  # one field too many
        b'+5511999990006,"Fe\nlipe",Recife\n'  # a quoted line break: a good row over two lines
        b'+5511999990007,Gil,"Porto Alegre"\n'
    )
    with db.begin() as conn:
        report = import_csv(conn, org, data)
    assert [line for line, _ in report.errors] == [3, 5, 6], report.errors
    assert "quote" in report.errors[0][1] and "field" in report.errors[2][1]
    rows = _contacts(db, org)
    assert set(rows) == {"+55119999900" + s for s in ("01", "03", "06", "07")}
    assert rows["+5511999990006"].name == "Fe\nlipe"


def test_the_command_line_import_of_a_broken_file_reports_lines_without_a_traceback(tmp_path, db, org):
    from tests.helpers import cli, org_name

    path = tmp_path / "c.csv"
    path.write_bytes("phone,name,tags\n+5511999990001,Zé,vip\\\n+5511999990002,\x00,x\n".encode("latin-1"))
    r = cli("contacts", "import", str(path), "--org", org_name(db, org), check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "line 3" in r.stderr and r.stdout.strip() == "1"
    path.write_bytes(b"phone,Phone\n1,2\n")
    r = cli("contacts", "import", str(path), "--org", org_name(db, org), check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "more than once" in r.stderr, r.stderr


CELLS = st.text(alphabet=st.sampled_from(list('ab"\\|,\n\r\x00 é+5519') + ["\ud7ff"]), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["+5511999990001", "11999990002", "+55 11 99999-0003", "12"]), CELLS, CELLS).map(
            list
        ),
        max_size=8,
    ),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
)
def test_any_file_is_imported_or_refused_as_a_whole_never_a_crash(db, org, rows, encoding):
    """Whatever the cells hold (quotes, backslashes, NULs, line breaks, pipes), the import keeps good rows
    and reports the others by line, or refuses the file with ImportFileError: nothing else escapes."""
    text = "phone,name,tags\n" + "\n".join(",".join(r) for r in rows) + "\n"
    data = text.encode(encoding, errors="replace")
    with db.connect() as conn, conn.begin() as tx:
        try:
            report = import_csv(conn, org, data)
        except ImportFileError:
            return
        finally:
            tx.rollback()
    assert all(isinstance(line, int) and line >= 2 for line, _ in report.errors)
