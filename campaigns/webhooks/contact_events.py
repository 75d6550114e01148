"""What inbound webhooks change on contacts: the 24 h window and opt-outs, set-based.

- Every inbound message refreshes `last_inbound_at` (the customer-service window). A phone we have never
  seen becomes a contact, so that its opt-out is remembered if it is imported later.
- Opt-outs come from Meta's `user_preferences` (stop/resume), from a failed status with 131050 (the user
  stopped marketing messages) and from keyword replies (PARAR, SAIR, CANCELAR, STOP; configurable;
  the whole message must be the keyword, so "não quero cancelar meu plano" opts nobody out). Opt-in
  keywords (VOLTAR, START) and `resume` clear it.
- The user's latest action wins: a change older than the contact's `opt_out_changed_at` is ignored, so
  shuffled or retried events cannot undo a newer choice. Opt-outs apply to every contact row with that
  phone in the organization.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa


def normalise_keyword(text: str | None) -> str:
    """'  Parar! ' → 'PARAR'; accents dropped ('Não' → 'NAO')."""
    if not text:
        return ""
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return plain.strip().strip(".!?¡¿ ").upper()


def keyword_set(csv: str) -> frozenset[str]:
    return frozenset(k for k in (normalise_keyword(w) for w in csv.split(",")) if k)


@dataclass(frozen=True)
class Seen:
    organization_id: uuid.UUID
    phone: str
    at: datetime
    name: str | None = None


@dataclass(frozen=True)
class OptChange:
    organization_id: uuid.UUID
    phone: str
    at: datetime
    opt_out: bool
    source: str  # user_preferences | keyword | 131050


TOUCH = sa.text("""
    with v as (
        select org, phone, max(at) as at, max(name) as name
        from unnest(cast(:orgs as uuid[]), cast(:phones as text[]), cast(:ats as timestamptz[]),
                    cast(:names as text[])) as v(org, phone, at, name)
        group by org, phone
    ), upd as (
        update contacts c set last_inbound_at = greatest(c.last_inbound_at, v.at), updated_at = now()
        from v where c.organization_id = v.org and c.phone = v.phone
    )
    insert into contacts (organization_id, phone, name, last_inbound_at)
    select v.org, v.phone, v.name, v.at from v
    where not exists (select 1 from contacts c where c.organization_id = v.org and c.phone = v.phone)
""")

OPT = sa.text("""
    with v as (
        select distinct on (org, phone) org, phone, at, opt_out, source
        from unnest(cast(:orgs as uuid[]), cast(:phones as text[]), cast(:ats as timestamptz[]),
                    cast(:outs as boolean[]), cast(:sources as text[])) as v(org, phone, at, opt_out, source)
        order by org, phone, at desc
    ), upd as (
        update contacts c set
            opted_out_at = case when v.opt_out then coalesce(c.opted_out_at, v.at) end,
            opt_out_source = case when not v.opt_out then null
                                  when c.opted_out_at is null then v.source else c.opt_out_source end,
            opt_out_changed_at = v.at, updated_at = now()
        from v
        where c.organization_id = v.org and c.phone = v.phone
          and coalesce(c.opt_out_changed_at, '-infinity') <= v.at
    )
    insert into contacts (organization_id, phone, opted_out_at, opt_out_source, opt_out_changed_at)
    select v.org, v.phone, case when v.opt_out then v.at end, case when v.opt_out then v.source end, v.at from v
    where not exists (select 1 from contacts c where c.organization_id = v.org and c.phone = v.phone)
""")


def touch(conn: sa.Connection, seen: list[Seen]) -> None:
    if seen:
        conn.execute(
            TOUCH,
            {
                "orgs": [s.organization_id for s in seen],
                "phones": [s.phone for s in seen],
                "ats": [s.at for s in seen],
                "names": [s.name for s in seen],
            },
        )


def apply_opt_changes(conn: sa.Connection, changes: list[OptChange]) -> None:
    if changes:
        conn.execute(
            OPT,
            {
                "orgs": [c.organization_id for c in changes],
                "phones": [c.phone for c in changes],
                "ats": [c.at for c in changes],
                "outs": [c.opt_out for c in changes],
                "sources": [c.source for c in changes],
            },
        )
