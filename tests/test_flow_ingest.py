"""The ingest-statuses flow on the real Prefect engine: it applies what the receiver stored and publishes
the touched campaigns' statistics as artifacts."""

from __future__ import annotations

import asyncio

from prefect import get_client

from flows.ingest_statuses import ingest_statuses
from tests.helpers import add_contacts, add_sandbox_number, create_campaign, phones, recipients, run_campaign


def test_the_flow_applies_statuses_and_publishes_the_campaigns_statistics(db, org, sandbox):
    sandbox.configure(read_rate=1.0)
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(5, start=9500)])
    cid = create_campaign(db, org, number)
    assert run_campaign(cid)["status"] == "completed"
    assert sandbox.drain_webhooks(timeout=20)

    result = ingest_statuses()
    assert str(cid) in result["campaigns"]
    assert {r["status"] for r in recipients(db, cid)} == {"read"}

    async def latest() -> str:
        from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

        async with get_client() as client:  # by key: the latest of every key is one page among hundreds
            [artifact] = await client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=[f"campaign-{cid}-stats"])))
            return str(artifact.data)

    assert "messages_read" in asyncio.run(latest())
