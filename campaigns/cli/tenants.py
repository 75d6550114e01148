"""Who sends: `orgs add` and `orgs list`, `numbers add` and `numbers limits` (with the rate and cap options both share),
`portfolios add`, and the API's bearer tokens (`api token`, `api revoke`)."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from campaigns.cli.common import as_json, db, err
from campaigns.control import tenancy
from campaigns.errors import NotFound
from campaigns.store.db import iso_z


def cmd_orgs_add(args: argparse.Namespace) -> int:
    with db().begin() as conn:
        print(tenancy.add_org(conn, args.name))
    return 0


def cmd_orgs_list(args: argparse.Namespace) -> int:
    with db().connect() as conn:
        orgs = tenancy.list_orgs(conn)
    if args.json:
        print(as_json(orgs, indent=2))
        return 0
    for o in orgs:
        print(f"{o['id']}  {o['numbers']:>3} numbers  {o['campaigns']:>5} campaigns  {o['name']}")
    err(f"{len(orgs)} organizations")
    return 0


def cmd_numbers_add(args: argparse.Namespace) -> int:
    from blocks.numbers import add_number

    with db().begin() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        number_id = add_number(
            conn,
            org,
            provider=args.provider,
            phone_number_id=args.phone_number_id,
            token=args.token,
            app_secret=args.app_secret,
            verify_token=args.verify_token,
            api_base=args.api_base,
            mps=args.mps,
            display_phone_number=args.display_phone_number,
            graph_version=args.graph_version,
        )
        tenancy.set_number_limits(conn, org, number_id, _limit_changes(args), args.preset)
    print(number_id)
    return 0


def _cap(value: str) -> int | None:
    """A cap on the command line: a positive number, or `none` for no cap."""
    if value.lower() in ("none", "no", "off"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of messages or 'none', got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("a cap must be at least 1 (or 'none' for no cap)")
    return number


def _limit_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line (the preset is applied by tenancy.set_number_limits)."""
    changes: dict[str, Any] = {}
    for name in ("per_minute", "per_hour", "per_day"):
        if getattr(args, name) is not _UNSET:
            changes[name] = getattr(args, name)
    if getattr(args, "set_mps", None) is not None:
        changes["mps"] = args.set_mps
    if args.portfolio is not None:
        changes["portfolio_id"] = None if args.portfolio.lower() == "none" else uuid.UUID(args.portfolio)
    return changes


def cmd_portfolios_add(args: argparse.Namespace) -> int:
    with db().begin() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        print(tenancy.add_portfolio(conn, org, args.name, None if args.limit == "unlimited" else int(args.limit)))
    return 0


def cmd_numbers_limits(args: argparse.Namespace) -> int:
    with db().begin() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        limits = tenancy.set_number_limits(conn, org, uuid.UUID(args.number_id), _limit_changes(args), args.preset)
    print(as_json(limits))
    return 0


def cmd_api_token(args: argparse.Namespace) -> int:
    from campaigns import api_tokens

    with db().begin() as conn:
        org = tenancy.org_id_by_name(conn, args.org)
        expires = datetime.now(UTC) + timedelta(days=args.expires_days) if args.expires_days else None
        token_id, token = api_tokens.issue(conn, org, args.role, expires)
    print(token)
    until = f"until {iso_z(expires)}" if expires else "until revoked"
    err(
        f"token {token_id} ({args.role}) for {args.org}, {until}: shown once, store it now; "
        f"`campaigns api revoke {token_id}` ends it"
    )
    return 0


def cmd_api_revoke(args: argparse.Namespace) -> int:
    from campaigns import api_tokens

    try:
        token_id = uuid.UUID(args.token_id)
    except ValueError:
        raise NotFound(f"Token not found: {args.token_id}") from None
    with db().begin() as conn:
        if not api_tokens.revoke(conn, token_id):
            raise NotFound(f"No live token with id {token_id}")
    err(f"token {token_id} revoked")
    return 0


_UNSET = object()


def limit_arguments(a: argparse.ArgumentParser) -> None:
    """The options `numbers add` and `numbers limits` share: the caps, a preset of them, the portfolio."""
    for name in ("minute", "hour", "day"):
        a.add_argument(
            f"--per-{name}",
            type=_cap,
            default=_UNSET,
            metavar="N|none",
            help=f"at most N messages per UTC {name} (none: no cap)",
        )
    from campaigns.sending.ratelimit import PRESETS

    a.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="meta-conservative: 20/min, 100/h, 500/day (the seed's figures); none: no caps",
    )
    a.add_argument("--portfolio", metavar="ID|none", help="the business portfolio whose messaging limit it shares")
