"""The Prefect global concurrency limit that shares the platform's sending between its flow runs.

Why not a tag limit on `send-batch`: since Prefect 3.4.19 a tagged task takes a lease from the API
for every run. Measured here (BENCHMARKS.md), those calls stalled all task threads for ~1.5 s every
few seconds whenever the API server was busy: 730 msg/s instead of 910 at a cap of 1,000. A flow run
instead takes its slots once per wave of batches (`occupy`: by the rate it may send at, `slots_for_run`)
and gives them back while it only waits for retries. A paced campaign (one batch a wave, its messages waiting for
their turn) and a probe take none: a slot held while waiting 36 s for the next message would let 32
slow campaigns stop every other campaign of the platform (flows/send_campaign.py).

A runner killed while it holds slots leaves them held until their lease expires (LEASE_SECONDS after its
last renewal): `send_slots` writes the lease's id down (campaigns/sending/send_lease.py) and the campaign's
next runner gives it back at once (`give_back`).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.context import ConcurrencyContext
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from campaigns.sending.send_lease import RunnerLease
from campaigns.settings import get_settings

log = logging.getLogger(__name__)
_ensured: set[str] = set()


def ensure_send_limit() -> str:
    """Create the limit if it is missing (idempotent; an operator's later change of its size is kept)."""
    settings = get_settings()
    name = settings.send_concurrency_name
    if name in _ensured:
        return name
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=settings.send_concurrency_limit)
                )
                log.info("created global concurrency limit %s = %d", name, settings.send_concurrency_limit)
            except ObjectAlreadyExists:  # another run created it meanwhile: ten campaigns started at once
                pass
    _ensured.add(name)
    return name


FULL_RATE = 1_000.0  # msg/s: the rate `parallel_batches` (12) was tuned to hold (BENCHMARKS.md, throughput)


def slots_for_run(rate: float) -> int:
    """The slots a wave of this run takes: its share of the platform's sending, by the rate its limits allow.

    A slot stands for about 1/12 of a 1,000 msg/s number's sending, not for a batch: a campaign at 80 msg/s
    runs its twelve batches at once as one at 1,000 does (each paced by the limiter, so a wave ends together
    and the number never idles between waves), but takes one slot, not twelve. With a slot a batch, two such
    campaigns held 24 of the 32 slots, and eight more numbers of the same platform waited for them to finish
    (`bench.throughput --numbers 10`: 160 msg/s of an 800 msg/s aggregate)."""
    settings = get_settings()
    full = min(settings.parallel_batches, settings.send_concurrency_limit)
    return max(1, min(full, math.ceil(full * rate / FULL_RATE)))


LEASE_SECONDS = 60  # Prefect renews a held lease every 45 s; a dead holder's slots come back 60 s after that


@contextmanager
def send_slots(name: str, occupy: int, lease: RunnerLease) -> Iterator[None]:
    """Prefect's `concurrency(...)` over the send limit, with the lease's id written down while it is held.

    Prefect's context manager does not hand out its lease's id; it records it, the moment the slots are
    granted, on the flow run's ConcurrencyContext (to release it should the release below be cancelled).
    It is read there: should a later Prefect record it elsewhere, nothing is written down and a dead
    runner's slots wait for their lease to expire, as before (tests/test_runner_faults.py says so)."""
    taken = None
    try:
        with concurrency(name, occupy=occupy, lease_duration=LEASE_SECONDS):
            context = ConcurrencyContext.get()
            taken = context.cleanup_lease_ids[-1] if context and context.cleanup_lease_ids else None
            if taken:
                lease.remember(taken)
            yield
    finally:
        if taken:  # given back by `concurrency` (or by its ConcurrencyContext): no longer the next runner's to free
            lease.forget()


def give_back(lease_id: uuid.UUID) -> None:
    """Release the slots held under a dead runner's lease now rather than when it expires (nothing happens
    if it already ended). Best effort: on failure the lease expires as usual."""
    try:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease_id)
    except Exception as exc:  # the API briefly away: the slots come back when the lease expires
        log.warning("could not give back the send slots of lease %s (back when it expires): %s", lease_id, exc)
