"""`contacts import`: an organization's contacts from a CSV file; the rejected rows named on stderr."""

from __future__ import annotations

import argparse
from pathlib import Path

from campaigns.cli.common import db, err
from campaigns.control import tenancy


def cmd_contacts_import(args: argparse.Namespace) -> int:
    from campaigns.audience.contacts import ImportFileError, import_csv
    from campaigns.settings import get_settings

    path = Path(args.file)
    if not path.exists():
        err(f"file not found: {path}")
        return 2
    try:
        with db().begin() as conn:
            org = tenancy.org_id_by_name(conn, args.org)
            report = import_csv(conn, org, path, get_settings().default_country_code)
    except ImportFileError as exc:
        err(f"import refused: {exc}")
        return 2
    if report.encoding in ("windows-1252", "latin-1"):
        err(f"the file is not UTF-8: read as {report.encoding}")
    for line, reason in report.errors:
        err(f"line {line}: {reason}")
    err(
        f"imported {report.imported} contacts ({report.inserted} new, {report.updated} updated); "
        f"{len(report.errors)} rows rejected"
    )
    print(report.imported)
    return 0
