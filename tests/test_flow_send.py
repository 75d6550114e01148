"""The send-campaign flow on the real Prefect engine against the sandbox."""

from __future__ import annotations

import pytest

from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    create_campaign,
    phones,
    recipients,
    run_campaign,
    sent_counts,
)

pytestmark = pytest.mark.flow  # every test runs a campaign through the send-campaign flow


def test_every_eligible_contact_gets_the_message_exactly_once(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": f"Ana {i}"} for i, p in enumerate(phones(250))])
    cid = create_campaign(db, org, number)

    result = run_campaign(cid)

    assert result["status"] == "completed"
    rows = recipients(db, cid)
    assert len(rows) == 250
    assert {r["status"] for r in rows} <= {"sent", "delivered", "read"}
    counts = sent_counts(sandbox)
    assert sorted(counts) == sorted(f"pytake:{r['id']}" for r in rows)
    assert set(counts.values()) == {1}
    bodies = {m["biz_opaque_callback_data"]: m for m in sandbox.messages()}
    first = next(r for r in rows if r["phone"] == phones(1)[0])
    assert "Ana 0" in bodies[f"pytake:{first['id']}"]["rendered"]
    assert campaign_row(db, cid)["completed_at"] is not None


def test_a_run_started_without_the_deployment_is_tagged_like_one_started_through_it(db, org, sandbox):
    """`campaigns demo` and `campaigns run` start the flow directly, without the deployment's `campaigns` tag:
    the Runs page filtered by that tag (the README's way to see campaigns alone) would miss them."""
    from prefect.client.orchestration import get_client

    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2)])
    result = run_campaign(create_campaign(db, org, number))

    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(result["flow_run_id"]).tags
    assert "campaigns" in tags and any(tag.startswith("org:") for tag in tags)
