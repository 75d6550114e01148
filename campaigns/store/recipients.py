"""Every write of a recipient's status, and the one table that says who may make which move.

Why one home: a recipient's status is written by the audience build, the batch's claim and record, the
cancel sweep, reconciliation, webhook ingestion and the operator's retry-failed. Each used to carry its own
`where status = ...` and its own ranking of sent < delivered < read, so "may this writer move a row from
A to B?" had seven answers to keep in step. Here there is one: `WRITERS`, a table of (from, to) moves per
writer, over `STATUSES` ordered by `RANK`. The SQL fragments the writers use (which rows they may touch,
which status they may write, the rank CASEs of ingestion) are generated from that table, each generated
target checked against it at import, and the statements run in the functions below (set-based: one
statement per batch, round or campaign, as before). tests/test_transitions.py runs every writer against
every (from, to) on Postgres; tests/unit/test_transition_table.py checks the table itself.

What the table says (the behaviour as it was, not a new policy):
- the audience creates each row pending, or skipped with its reason;
- a batch claims pending → sending, and records a claimed row's outcome: sent, failed, skipped, cancelled,
  back to pending (a retry later), or still sending (unknown: a timeout after the request left);
- a cancelled campaign's pending rows become cancelled (the operator's cancel, and the batch's sweep after
  it records, for a cancel that committed while it was sending);
- reconciliation settles rows left in sending: back to pending, failed when retries are exhausted,
  cancelled when the campaign is;
- ingestion moves a row forward only, by rank: pending and sending (before any answer) < sent < delivered <
  read < failed. `failed` ranks last, so it is final for webhooks (a failure reported after a read still
  wins); a status webhook for a pending row (reconciliation had put it back) proves it was accepted;
- the operator's retry-failed puts failed rows back to pending: the only move out of `failed`;
- skipped and cancelled are terminal: nothing moves a row out of them, and ingestion never touches them.

The claim's time is its token: `record` writes only rows still held by the claim made at `claimed_at`.

Why it stays one module (about 430 lines): the reason above. The table and every statement generated from it are
one thing to read and to change; split, the seven answers would drift apart again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import product
from typing import Any, Protocol

import sqlalchemy as sa

from campaigns.store.db import psycopg_of

# ---------------------------------------------------------------------------------------------- the table

PENDING, SENDING, SENT, DELIVERED, READ, FAILED, SKIPPED, CANCELLED = (
    "pending",
    "sending",
    "sent",
    "delivered",
    "read",
    "failed",
    "skipped",
    "cancelled",
)
STATUSES = (PENDING, SENDING, SENT, DELIVERED, READ, FAILED, SKIPPED, CANCELLED)

# The order a row moves forward in. skipped and cancelled have no rank: they are outside the order (never
# sent; nothing moves them, ingestion leaves them alone).
RANK = {PENDING: 0, SENDING: 1, SENT: 2, DELIVERED: 3, READ: 4, FAILED: 5}

# What a status webhook may say, and its rank. Meta's `played` (a voice message heard) is a read.
WEBHOOK_STATUSES = (SENT, DELIVERED, READ, FAILED)
WEBHOOK_ALIASES = {"played": READ}
WEBHOOK_RANK = {
    word: RANK[status]
    for status in WEBHOOK_STATUSES
    for word in (status, *(alias for alias, of in WEBHOOK_ALIASES.items() if of == status))
}

# Below any webhook's rank: a row not answered yet (pending or sending) compares as `sending` in ingestion.
# Postgres arrays count from 1: the rank of `sending` is the index of the first status of INGEST_ORDER.
UNANSWERED = SENDING

OPEN = (PENDING, SENDING)  # a campaign with a row in these is not done


@dataclass(frozen=True)
class Writer:
    """One writer of recipient statuses: the moves it may make. From None: the writer creates the row."""

    name: str
    moves: frozenset[tuple[str | None, str]]
    why: str

    def sources(self) -> tuple[str, ...]:
        return tuple(s for s in STATUSES if any(f == s for f, _ in self.moves))

    def targets(self) -> tuple[str, ...]:
        return tuple(s for s in STATUSES if any(t == s for _, t in self.moves))

    def allows(self, source: str | None, target: str) -> bool:
        return (source, target) in self.moves


def _moves(sources: Iterable[str | None], targets: Iterable[str]) -> frozenset[tuple[str | None, str]]:
    return frozenset(product(sources, targets))


def _forward() -> frozenset[tuple[str | None, str]]:
    """Ingestion: the row's status becomes the higher of its rank and the webhooks' (never lower)."""
    return frozenset((s, t) for s in RANK for t in WEBHOOK_STATUSES if RANK[t] >= RANK[s])


AUDIENCE = Writer("audience", _moves([None], [PENDING, SKIPPED]), "the audience build: each row pending or skipped")
CLAIM = Writer("claim", _moves([PENDING], [SENDING]), "a batch claims due rows")
RECORD = Writer(
    "record",
    _moves([SENDING], [SENDING, SENT, FAILED, PENDING, SKIPPED, CANCELLED]),
    "a batch records each claimed row's outcome (sending: unknown; pending: a retry later)",
)
CANCEL = Writer("cancel", _moves([PENDING], [CANCELLED]), "a cancelled campaign's pending rows")
RECONCILE = Writer(
    "reconcile",
    _moves([SENDING], [PENDING, FAILED, CANCELLED]),
    "rows of unknown outcome with no webhook: resent later, failed when exhausted, or cancelled",
)
INGEST = Writer("ingest", _forward(), "status webhooks move a row forward only")
RETRY_FAILED = Writer("retry_failed", _moves([FAILED], [PENDING]), "the operator sends failed rows again")

WRITERS = {w.name: w for w in (AUDIENCE, CLAIM, RECORD, CANCEL, RECONCILE, INGEST, RETRY_FAILED)}

# ------------------------------------------------------------------------- SQL generated from the table


def _literal(status: str) -> str:
    assert status in STATUSES or status in WEBHOOK_ALIASES, status
    return f"'{status}'"


def status_in(column: str, statuses: Sequence[str]) -> str:
    """`column = 'a'` or `column in ('a', 'b')`."""
    if len(statuses) == 1:
        return f"{column} = {_literal(statuses[0])}"
    return f"{column} in ({', '.join(map(_literal, statuses))})"


def may_move(writer: Writer, column: str = "status") -> str:
    """The WHERE fragment: rows the writer may move (its moves' sources)."""
    return status_in(column, writer.sources())


def target(writer: Writer) -> str:
    """The one status a writer with a single target writes."""
    (only,) = writer.targets()
    return _literal(only)


def case_target(writer: Writer, whens: Sequence[tuple[str, str]], otherwise: str) -> str:
    """`case when cond then 'a' ... else 'b' end`, every status one the writer may write."""
    for status in (*(s for _, s in whens), otherwise):
        assert status in writer.targets(), f"{writer.name} may not write {status}"
    arms = " ".join(f"when {cond} then {_literal(status)}" for cond, status in whens)
    return f"case {arms} else {_literal(otherwise)} end"


def rank_case(column: str, ranks: dict[str, int], otherwise: int | None = None) -> str:
    """`case column when 'a' then 2 ... [else n] end`."""
    arms = " ".join(f"when {_literal(s)} then {r}" for s, r in ranks.items())
    return f"case {column} {arms}{f' else {otherwise}' if otherwise is not None else ''} end"


def words_for(status: str) -> tuple[str, ...]:
    """The webhook words that mean `status` (read: read, played)."""
    return (status, *(alias for alias, of in WEBHOOK_ALIASES.items() if of == status))


# Ingestion's statuses by rank, from UNANSWERED up: `(array[...])[rank]` is the status of a rank.
INGEST_ORDER = tuple(s for s in sorted(RANK, key=RANK.__getitem__) if RANK[s] >= RANK[UNANSWERED])
assert RANK[UNANSWERED] == 1 and [RANK[s] for s in INGEST_ORDER] == list(range(1, len(INGEST_ORDER) + 1))
INGEST_STATUS_BY_RANK = f"(array[{', '.join(map(_literal, INGEST_ORDER))}])"
# A webhook's rank (null for a word the table does not know: the parser lets none through).
WEBHOOK_RANK_CASE = rank_case("v.status", WEBHOOK_RANK)
# The row's rank, answered statuses by their rank and the rest (pending, sending) as UNANSWERED.
ROW_RANK_CASE = rank_case(
    "r.status", {s: RANK[s] for s in INGEST.sources() if RANK[s] > RANK[UNANSWERED]}, RANK[UNANSWERED]
)

# ------------------------------------------------------------------------------------------ the writers


def check_audience_statuses(statuses: Iterable[str]) -> None:
    """The audience build may create rows only as the table says (pending, skipped)."""
    if refused := sorted({s for s in statuses if not AUDIENCE.allows(None, s)}):
        raise ValueError(f"the audience may not create recipients as {', '.join(refused)}")


AUDIENCE_COLUMNS = "campaign_id, organization_id, contact_id, phone, status, skip_reason"


def copy_audience(db: sa.Engine, csv: bytes, table: str = "campaign_recipients") -> None:
    """COPY audience rows (CSV of AUDIENCE_COLUMNS, no header; statuses checked by the caller on its frame
    with check_audience_statuses) in one transaction of its own. `table`: bench/audience.py's copies of it."""
    with db.begin() as conn:
        raw = psycopg_of(conn)
        with (
            raw.cursor() as cur,
            cur.copy(f"copy {table} ({AUDIENCE_COLUMNS}) from stdin (format csv)") as copy,
        ):
            copy.write(csv)


def discard_audience(conn: sa.Connection, campaign_id: uuid.UUID) -> None:
    """Delete what a crashed build of a not-yet-frozen audience left, before building it again."""
    conn.execute(sa.text("delete from campaign_recipients where campaign_id = :c"), {"c": campaign_id})


CLAIM_SQL = sa.text(f"""
    with picked as (
        select r.id, ct.id as contact_exists, ct.name, ct.attributes, ct.opted_out_at
        from campaign_recipients r left join contacts ct on ct.id = r.contact_id
        where r.campaign_id = :campaign and {may_move(CLAIM, "r.status")}
          and (r.next_attempt_at is null or r.next_attempt_at <= now())
          and exists (select 1 from campaigns c where c.id = :campaign and c.status = 'running'
                      and c.audience_frozen_at is not null and (c.provider_probe_at is null or :probe))
        order by r.id
        limit :limit
        for update of r skip locked
    )
    update campaign_recipients r
    set status = {target(CLAIM)}, claimed_at = now(), in_flight_at = null, attempts = r.attempts + 1
    from picked
    where r.id = picked.id
    returning r.id, r.phone, r.attempts, picked.contact_exists, picked.name, picked.attributes, picked.opted_out_at,
              r.rate_tries, r.claimed_at
""")


def claim(conn: sa.Connection, campaign_id: uuid.UUID, limit: int, probe: bool = False) -> list[Any]:
    """Claim up to `limit` due pending rows of a running campaign in one statement (SKIP LOCKED), with what
    rendering needs of their contacts. While the campaign waits for its provider only a probe claims."""
    return list(conn.execute(CLAIM_SQL, {"campaign": campaign_id, "limit": limit, "probe": probe}).all())


RECORD_SQL = sa.text(f"""
    update campaign_recipients r set
        status = v.status,
        wamid = coalesce(v.wamid, r.wamid),
        sent_at = case when v.status = {_literal(SENT)} then coalesce(r.sent_at, v.at) else r.sent_at end,
        failed_at = case when v.status = {_literal(FAILED)} then v.at else r.failed_at end,
        error_code = coalesce(v.code, case when {status_in("v.status", (SENT, PENDING))} then null
                                      else r.error_code end),
        error_message = case when v.status = {_literal(SENT)} then null else coalesce(v.message, r.error_message) end,
        skip_reason = coalesce(v.skip_reason, r.skip_reason),
        next_attempt_at = v.next_at,
        claimed_at = case when v.status = {_literal(SENDING)} then v.at else r.claimed_at end,
        attempts = r.attempts + v.attempts_delta,
        rate_tries = coalesce(v.rate_tries, r.rate_tries),
        attempt_log = case when v.entry is null then r.attempt_log else r.attempt_log || jsonb_build_array(v.entry) end
    from unnest(
        cast(:ids as bigint[]), cast(:statuses as text[]), cast(:wamids as text[]), cast(:codes as int[]),
        cast(:messages as text[]), cast(:skip_reasons as text[]), cast(:next_ats as timestamptz[]),
        cast(:deltas as int[]), cast(:entries as jsonb[]), cast(:ats as timestamptz[]), cast(:rate_tries as int[])
    ) as v(id, status, wamid, code, message, skip_reason, next_at, attempts_delta, entry, at, rate_tries)
    where r.id = v.id and {may_move(RECORD, "r.status")} and r.claimed_at = :claimed_at
      and {status_in("v.status", RECORD.targets())}
""")


class RecordedOutcome(Protocol):
    """What `record` reads of an outcome (campaigns.sending.outcomes.Outcome)."""

    id: int
    status: str
    wamid: str | None
    code: int | None
    message: str | None
    skip_reason: str | None
    next_at: datetime | None
    attempts_delta: int
    entry: dict[str, Any] | None  # the attempt log entry
    at: datetime
    rate_tries: int | None


_RECORD_PARAMS = (
    ("ids", "id"),
    ("statuses", "status"),
    ("wamids", "wamid"),
    ("codes", "code"),
    ("messages", "message"),
    ("skip_reasons", "skip_reason"),
    ("next_ats", "next_at"),
    ("deltas", "attempts_delta"),
    ("entries", "entry"),
    ("ats", "at"),
    ("rate_tries", "rate_tries"),
)


def record(conn: sa.Connection, outcomes: Sequence[RecordedOutcome], claimed_at: datetime | None) -> int:
    """Write claimed rows' outcomes in one UPDATE; only rows still held by the claim made at `claimed_at`,
    and only statuses the table lets a batch record. Returns the rows written."""
    params: dict[str, Any] = {name: [getattr(o, attr) for o in outcomes] for name, attr in _RECORD_PARAMS}
    params["entries"] = [json.dumps(o.entry) if o.entry else None for o in outcomes]
    params["claimed_at"] = claimed_at
    return conn.execute(RECORD_SQL, params).rowcount


CANCEL_SQL = sa.text(f"""
    update campaign_recipients set status = {target(CANCEL)} where campaign_id = :c and {may_move(CANCEL)}
    and exists (select 1 from campaigns where id = :c and status = 'cancelled')
""")


def cancel_pending(conn: sa.Connection, campaign_id: uuid.UUID) -> int:
    """A cancelled campaign's pending rows become cancelled (nothing if the campaign is not cancelled)."""
    return conn.execute(CANCEL_SQL, {"c": campaign_id}).rowcount


# Settled now: never sent (unmarked), or marked and past the grace period. Greatest: a batch that recorded
# the outcome unknown (a timeout after the request left) moved claimed_at to that answer. The condition is
# also on the updated row itself, so a mark committed meanwhile (the row was locked) is seen: it then waits.
SETTLE_NOW = f"""{may_move(RECONCILE, "r.status")}
    and (r.in_flight_at is null or greatest(r.claimed_at, r.in_flight_at) < now() - make_interval(secs => :g))"""

REQUEUE_SQL = sa.text(f"""
    update campaign_recipients r set
        status = {case_target(RECONCILE, [("v.cancelled", CANCELLED), ("v.exhausted", FAILED)], PENDING)},
        next_attempt_at = null,
        attempts = case when r.in_flight_at is null then greatest(r.attempts - 1, 0) else r.attempts end,
        failed_at = case when v.exhausted and not v.cancelled then now() else r.failed_at end,
        error_message = case when v.exhausted and not v.cancelled
            then 'retries exhausted after ' || r.attempts || ' attempts: outcome unknown, no status webhook'
            else r.error_message end,
        attempt_log = r.attempt_log || jsonb_build_array(jsonb_build_object(
            'note', case when r.in_flight_at is null then 'claimed, never sent (its runner stopped first), '
                         else 'outcome unknown: no status webhook within the grace period, ' end
                    || case when v.cancelled then 'campaign cancelled' when v.exhausted then 'retries exhausted'
                            when r.in_flight_at is null then 'sending later' else 'resending' end,
            'timestamp', now()))
    from (select r.in_flight_at is not null and r.attempts > c.retry_max_attempts as exhausted,
                 c.status = 'cancelled' as cancelled, r.id
          from campaign_recipients r join campaigns c on c.id = r.campaign_id
          where r.campaign_id = :c and {SETTLE_NOW}) v
    where r.id = v.id and {SETTLE_NOW}
""")


def requeue_unknown(conn: sa.Connection, campaign_id: uuid.UUID, grace_seconds: float) -> int:
    """Settle the campaign's rows in `sending` that are due (SETTLE_NOW): pending, failed when their retries
    are exhausted, cancelled when the campaign is. Returns how many."""
    return int(conn.execute(REQUEUE_SQL, {"c": campaign_id, "g": grace_seconds}).rowcount)


def _first_at(status: str) -> str:
    return f"min(v.at) filter (where {status_in('v.status', words_for(status))})"


APPLY_SQL = sa.text(f"""
    with s as (
        select v.rid,
               max(v.wamid) as wamid,
               {_first_at(SENT)} as sent_at,
               {_first_at(DELIVERED)} as delivered_at,
               {_first_at(READ)} as read_at,
               {_first_at(FAILED)} as failed_at,
               max(v.code) filter (where v.status = {_literal(FAILED)}) as code,
               max(v.message) filter (where v.status = {_literal(FAILED)}) as message,
               max({WEBHOOK_RANK_CASE}) as rank
        from unnest(cast(:rids as bigint[]), cast(:wamids as text[]), cast(:statuses as text[]),
                    cast(:ats as timestamptz[]), cast(:codes as int[]), cast(:messages as text[]))
             as v(rid, wamid, status, at, code, message)
        group by v.rid
    )
    update campaign_recipients r set
        wamid = coalesce(r.wamid, s.wamid),
        status = {INGEST_STATUS_BY_RANK}[greatest(s.rank, {ROW_RANK_CASE})],
        sent_at = coalesce(least(r.sent_at, s.sent_at), s.delivered_at, s.read_at),
        delivered_at = least(r.delivered_at, s.delivered_at),
        read_at = least(r.read_at, s.read_at),
        failed_at = least(r.failed_at, s.failed_at),
        error_code = case when s.failed_at is not null and r.status <> {_literal(FAILED)} then s.code
                     else r.error_code end,
        error_message = case when s.failed_at is not null and r.status <> {_literal(FAILED)} then s.message
                        else r.error_message end
    from s
    where r.id = s.rid and {may_move(INGEST, "r.status")}
    returning r.id, r.campaign_id
""")


class StatusWebhook(Protocol):
    """What `apply_webhooks` reads of a status update (campaigns.webhooks.parse.StatusUpdate)."""

    recipient_id: int | None
    wamid: str | None
    status: str
    at: datetime
    code: int | None
    message: str | None


def apply_webhooks(conn: sa.Connection, updates: Sequence[StatusWebhook]) -> dict[int, Any]:
    """Apply status webhooks of known recipients in one UPDATE: forward only, each status keeping its first
    time, idempotent in any order. Returns {recipient id: campaign id} for the rows it wrote."""
    params = {
        "rids": [u.recipient_id for u in updates],
        "wamids": [u.wamid for u in updates],
        "statuses": [u.status for u in updates],
        "ats": [u.at for u in updates],
        "codes": [u.code for u in updates],
        "messages": [u.message for u in updates],
    }
    return {row.id: row.campaign_id for row in conn.execute(APPLY_SQL, params)}


RETRY_FAILED_SQL = sa.text(f"""
    update campaign_recipients set status = {target(RETRY_FAILED)}, attempts = 0, rate_tries = 0,
           next_attempt_at = null, wamid = null, failed_at = null,
           attempt_log = attempt_log || jsonb_build_array(jsonb_build_object(
               'note', 'failure retried by an operator', 'timestamp', now()))
    where campaign_id = :c and organization_id = :o and {may_move(RETRY_FAILED)}
      and (cast(:codes as int[]) is null or error_code = any(cast(:codes as int[])))
      and error_code is distinct from :opted_out
""")


def retry_failed(
    conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, codes: list[int] | None, opted_out: int
) -> int:
    """Failed rows (those with `codes`, or all) back to pending with a fresh retry budget, never those that
    failed with `opted_out` (the person stopped marketing messages). Returns how many."""
    return int(
        conn.execute(
            RETRY_FAILED_SQL, {"c": campaign_id, "o": org, "codes": codes or None, "opted_out": opted_out}
        ).rowcount
    )
