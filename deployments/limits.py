"""The Prefect global concurrency limit that caps parallel send batches across every flow run.

Why not a tag limit on `send-batch`: since Prefect 3.4.19 a tagged task takes a lease from the API
for every run. Measured here (BENCHMARKS.md), those calls stalled all task threads for ~1.5 s every
few seconds whenever the API server was busy: 730 msg/s instead of 910 at a cap of 1,000. A flow run
instead takes its slots once per wave of batches (`occupy` = the batches it runs at once) and gives
them back while it only waits for retries.
"""

from __future__ import annotations

import logging

from prefect.client.orchestration import get_client

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
        except Exception:  # ObjectNotFound: create it
            client.upsert_global_concurrency_limit_by_name(name, settings.send_concurrency_limit)
            log.info("created global concurrency limit %s = %d", name, settings.send_concurrency_limit)
    _ensured.add(name)
    return name


def slots_for_run() -> int:
    settings = get_settings()
    return min(settings.parallel_batches, settings.send_concurrency_limit)
