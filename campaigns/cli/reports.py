"""What reads campaigns and changes nothing: `list`, `stats`, `progress`, `retry-stats`, and `recipients`
(a page at a time, or every one as CSV)."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

from campaigns.cli.common import as_json, db, err, org_of
from campaigns.control import tenancy


def cmd_list(args: argparse.Namespace) -> int:
    from campaigns.control.services import list_campaigns

    with db().connect() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        body = list_campaigns(conn, org, args.status, args.skip, args.limit)
    if args.json:
        print(as_json(body, indent=2))
        return 0
    for c in body["campaigns"]:
        reason = f" ({c['paused_reason']})" if c["paused_reason"] else ""
        print(f"{c['id']}  {c['status'] + reason:<28} {c['total_recipients']:>9}  {c['name']}")
    err(f"{len(body['campaigns'])} of {body['total']} campaigns")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from campaigns.control.services import progress_of, retry_stats_of, stats_of

    read = {"stats": stats_of, "progress": progress_of, "retry-stats": retry_stats_of}[args.command]
    with db().connect() as conn:
        org = org_of(conn, args.id, args.org)
        body = read(conn, org, uuid.UUID(args.id))
    if args.json:
        print(as_json(body, indent=2))
    else:
        for k, v in body.items():
            print(f"{k:28} {v}")
    return 0


def cmd_recipients(args: argparse.Namespace) -> int:
    from campaigns.control.services import recipients_of

    if args.csv:
        if args.after is not None or args.page_size is not None:
            err("error: --csv exports every matching recipient; --after and --page-size do not apply")
            return 2
        return _export_recipients(args)
    with db().connect() as conn:
        org = org_of(conn, args.id, args.org)
        size = {} if args.page_size is None else {"page_size": args.page_size}
        body = recipients_of(conn, org, uuid.UUID(args.id), args.status, after=args.after, **size)
    if args.json:
        print(as_json(body, indent=2))
    else:
        print(f"{'CONTACT':36}  {'NAME':20}  {'PHONE':15}  {'STATUS':9}  {'TRIES':>5}  DETAIL")
        for contact_id, r in body["recipients"].items():
            detail = (
                r["skip_reason"]
                or (
                    f"{r['error_code'] or ''} {r['error_message'] or ''}".strip()
                    if r["status"] == "failed"
                    else r["message_id"]
                )
                or ""
            )
            print(
                f"{contact_id:36}  {(r['contact_name'] or '')[:20]:20}  {r['contact_phone']:15}  "
                f"{r['status']:9}  {len(r['attempts']):5}  {detail[:80]}"
            )
    more = f"; next page: --after {body['next_cursor']}" if body["next_cursor"] else ""
    err(f"{len(body['recipients'])} of {body['total']} recipients{more}")
    return 0


def _export_recipients(args: argparse.Namespace) -> int:
    """CSV to stdout, or to a file that appears only once complete (no half export left behind)."""
    from campaigns.control.services import export_recipients as export

    with db().connect() as conn:
        org = org_of(conn, args.id, args.org)
        if args.csv == "-":
            try:
                n = export(conn, org, uuid.UUID(args.id), args.status, sys.stdout.buffer)
            except BrokenPipeError:  # `| head`: the reader has seen enough; no traceback
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                conn.invalidate()  # the COPY was cut off midway: this connection is not reusable
                return 1
        else:
            path = Path(args.csv)
            part = path.with_name(path.name + ".part")
            try:
                with part.open("wb") as out:
                    n = export(conn, org, uuid.UUID(args.id), args.status, out)
                part.replace(path)
            finally:
                part.unlink(missing_ok=True)
    err(f"exported {n} recipients to {'stdout' if args.csv == '-' else args.csv}")
    return 0
