"""The ingest-statuses flow on the real Prefect engine: it applies what the receiver stored and brings the
touched campaigns' summary artifacts up to date."""

from __future__ import annotations

import asyncio

import pytest
from prefect import get_client

from flows.ingest_statuses import ingest_statuses
from tests.helpers import add_contacts, add_sandbox_number, create_campaign, phones, recipients, run_campaign

pytestmark = pytest.mark.flow  # every test runs the send-campaign and ingest-statuses flows


def test_the_flow_applies_statuses_and_refreshes_the_campaigns_summary_in_place(db, org, sandbox):
    sandbox.configure(read_rate=1.0)
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(5, start=9500)])
    cid = create_campaign(db, org, number)
    assert run_campaign(cid)["status"] == "completed"
    assert sandbox.drain_webhooks(timeout=20)

    result = ingest_statuses()
    assert str(cid) in result["campaigns"]
    assert {r["status"] for r in recipients(db, cid)} == {"read"}

    async def summaries() -> list:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"campaign-{cid}-summary"]))
            )

    [summary] = asyncio.run(summaries())  # the run's own summary, updated in place: no new version
    assert "| read | 5 |" in summary.data
