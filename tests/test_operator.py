"""The operator deployments, create-campaign and campaign-control: their forms, and what they do, through
real Postgres and the real Prefect server (send-campaign/default exists there, served by nobody, so the runs
they launch or schedule wait in Scheduled for the tests to read); the flows run in-process."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.whatsapp import fresh_credentials
from campaigns.control import lifecycle, operator
from campaigns.control.models import CampaignCreate
from deployments.launch import PrefectRuns
from flows.campaign_control import campaign_control
from flows.create_campaign import create_campaign
from tests.helpers import add_contacts, add_sandbox_number, campaign_row, org_name, phones, prefect_run
from tests.helpers import create_campaign as new_campaign

TEMPLATE = {
    "message_type": "template",
    "template_name": "black_friday",
    "language": "pt_BR",
    "template_variables": {"body": ["{{contact.name}}"]},
}
FAST = {"messages_per_hour": None, "delay_between_messages_seconds": 0}


@pytest.fixture
def flow_logs(caplog) -> pytest.LogCaptureFixture:
    """What the flows log through their run logger (the tests run Prefect's loggers at WARNING otherwise)."""
    caplog.set_level(logging.INFO, logger="prefect.flow_runs")
    return caplog


def schema_of(flow) -> dict:
    return flow.parameters.model_dump()


# -- the forms -------------------------------------------------------------------------------------------------


def test_the_forms_have_titles_descriptions_defaults_bounds_dropdowns_and_an_order():
    schema = schema_of(create_campaign)
    assert schema["required"] == ["organization", "campaign"]
    top = schema["properties"]
    assert [top[k]["position"] for k in ("organization", "campaign", "message", "audience", "pace", "then")] == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    assert top["organization"]["description"] == "The organization's name (or id)."
    defs = schema["definitions"]
    assert [
        defs[top[k]["$ref"].split("/")[-1]]["title"] for k in ("campaign", "message", "audience", "pace", "then")
    ] == ["Campaign", "Message", "Audience", "Pace and retries", "Then"]
    for definition in defs.values():  # every field titled, described and placed, in order
        fields = definition["properties"].values()
        assert all(f["title"] and f["description"] for f in fields), definition["title"]
        assert sorted(f["position"] for f in fields) == list(range(len(definition["properties"])))
        assert definition["description"]  # the section's help text: the model's docstring

    pace = defs["PaceForm"]["properties"]
    per_hour, no_cap = pace["messages_per_hour"]["anyOf"]
    assert (per_hour["minimum"], per_hour["maximum"], pace["messages_per_hour"]["default"]) == (1, 3_600_000, 100)
    assert no_cap == {"type": "null", "title": "No campaign cap"}
    for name, low, high in [
        ("delay_between_messages_seconds", 0, 60),
        ("retry_max_attempts", 1, 10),
        ("retry_base_delay", 10, 600),
        ("retry_max_delay", 60, 7200),
    ]:
        assert (pace[name]["minimum"], pace[name]["maximum"]) == (low, high), name
        assert pace[name]["default"] == CampaignCreate.model_fields[name].default  # the seed's defaults
    assert defs["MessageForm"]["properties"]["message_type"]["enum"] == ["text", "template"]
    audience = defs["AudienceForm"]["properties"]
    assert audience["audience_type"]["enum"] == ["all_contacts", "tags", "contacts"]
    assert audience["match"]["enum"] == ["any", "all"] and audience["respect_opt_out"]["default"] is True
    assert defs["CampaignDetails"]["properties"]["name"]["maxLength"] == 255
    assert defs["AfterCreate"]["properties"]["action"]["enum"] == ["draft", "start", "schedule"]
    assert defs["AfterCreate"]["properties"]["at"]["anyOf"][0]["format"] == "date-time"

    control = schema_of(campaign_control)["properties"]
    assert control["action"]["enum"] == ["pause", "resume", "cancel", "retry-failed", "schedule", "start"]
    assert control["time_zone"]["default"] == "America/Sao_Paulo" and "Upcoming" in control["at"]["description"]
    # The deployment registers that schema in Prefect (the UI's form) and enforces it on the runs it creates.
    deployment_id = create_campaign.to_deployment(name="form-check", tags=["campaigns", "operator"]).apply()
    with get_client(sync_client=True) as client:
        registered = client.read_deployment(deployment_id)
    assert registered.parameter_openapi_schema == schema and registered.enforce_parameter_schema


# -- create-campaign -------------------------------------------------------------------------------------------


def test_create_campaign_finds_the_number_by_phone_number_id_display_number_or_id(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox, phone_number_id="100000000000077")
    with db.begin() as conn:
        conn.execute(
            sa.text("update whatsapp_numbers set display_phone_number = '+55 11 91234-0077' where id = :n"),
            {"n": number},
        )
    name = org_name(db, org)
    for ref in ("100000000000077", "5511912340077", "+55 (11) 91234-0077", str(number)):
        out = operator.create_campaign(
            db,
            name,
            {"name": f"by {ref}", "whatsapp_number": ref},
            TEMPLATE,
            {"audience_type": "tags", "tags": ["vip"], "match": "all"},
            FAST,
            runs=PrefectRuns(),
            credentials=fresh_credentials,
        )
        row = campaign_row(db, out.campaign_id)
        assert (row["whatsapp_number_id"], row["status"], out.status) == (number, "draft", "draft")
    assert row["message_content"] == {"template_name": "black_friday", "language": "pt_BR"}
    assert row["audience_filter"] == {"tags": ["vip"], "match": "all", "contact_ids": []}
    assert (row["messages_per_hour"], row["retry_max_attempts"], row["description"]) == (None, 3, None)
    assert out.done == [f"created campaign {out.campaign_id} 'by {number}' (template, audience tags) as a draft"]


@pytest.mark.flow
def test_an_invalid_body_fails_the_run_naming_each_field_as_the_api_does(db, org, sandbox, flow_logs):
    number = add_sandbox_number(db, org, sandbox)
    state = create_campaign(
        org_name(db, org),
        {"name": "Bad", "whatsapp_number": "5550000"},
        {"message_type": "text", "text": ""},
        pace={"retry_max_attempts": 99, "messages_per_hour": 0, "colour": "red"},
        return_state=True,
    )

    assert state.is_failed()
    errors = state.message.split("; ")
    assert errors[0].startswith("whatsapp_number: no WhatsApp number '5550000' in this organization (its numbers: ")
    assert "retry_max_attempts: Input should be less than or equal to 10" in errors  # CampaignCreate's own words
    assert "messages_per_hour: Input should be greater than or equal to 1" in errors
    assert "colour: Extra inputs are not permitted" in errors
    assert "Traceback" not in flow_logs.text and "whatsapp_number: no WhatsApp number" in flow_logs.text
    no_text = create_campaign(
        org_name(db, org),
        {"name": "Bad", "whatsapp_number": str(number)},
        {"message_type": "text", "text": " "},
        return_state=True,
    )
    assert no_text.is_failed() and no_text.message == "message_content.text: required for a text message"
    with db.connect() as conn:
        assert not conn.execute(
            sa.text("select count(*) from campaigns where organization_id = :o"), {"o": org}
        ).scalar()

    unknown = create_campaign("no-such-org", {"name": "x", "whatsapp_number": "1"}, return_state=True)
    assert unknown.is_failed() and unknown.message == "organization: no organization named 'no-such-org'"


@pytest.mark.flow
def test_create_and_start_hands_the_campaign_to_a_send_campaign_run(db, org, sandbox, send_deployment, flow_logs):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(
        db,
        org,
        [{"phone": p, "name": "Ana", "tags": ["vip"]} for p in phones(4, start=7100)]
        + [{"phone": phones(1, start=7200)[0], "name": "Bia"}],
    )
    state = create_campaign(
        org_name(db, org),
        {"name": "Start now", "whatsapp_number": str(number)},
        TEMPLATE,
        {"audience_type": "tags", "tags": ["vip"]},
        FAST,
        {"action": "start"},
        return_state=True,
    )

    assert state.is_completed(), state.message
    result = state.result()
    row = campaign_row(db, uuid.UUID(result["campaign_id"]))
    assert (row["status"], result["status"], result["total_recipients"]) == ("running", "running", 4)
    assert row["flow_run_id"] == result["flow_run_id"]
    run = prefect_run(result["flow_run_id"])  # waiting for `campaigns serve` to pick it up
    assert run.parameters == {"campaign_id": result["campaign_id"]} and run.state.type.value == "SCHEDULED"
    with get_client(sync_client=True) as client:
        assert run.deployment_id == client.read_deployment_by_name(send_deployment).id
    logs = flow_logs.text
    assert f"created campaign {row['id']} 'Start now' (template, audience tags) as a draft" in logs
    assert f"started campaign {row['id']} 'Start now': audience of 4 contacts" in logs
    assert f"send-campaign flow run {row['flow_run_id']} will send it" in logs

    # A start refused by the checklist leaves the new campaign a draft and says why.
    refused = create_campaign(
        org_name(db, org),
        {"name": "Nobody", "whatsapp_number": str(number)},
        TEMPLATE,
        {"audience_type": "tags", "tags": ["nobody"]},
        then={"action": "start"},
        return_state=True,
    )
    assert refused.is_failed()
    assert refused.message.endswith("not started: Preflight failed; audience: the audience has no contacts")
    with db.connect() as conn:
        assert (
            conn.execute(
                sa.text("select status from campaigns where name = 'Nobody' and organization_id = :o"), {"o": org}
            ).scalar_one()
            == "draft"
        )


@pytest.mark.flow
def test_create_and_schedule_puts_a_scheduled_run_under_upcoming(db, org, sandbox, send_deployment):
    number = add_sandbox_number(db, org, sandbox)
    state = create_campaign(
        org_name(db, org),
        {"name": "Later", "whatsapp_number": str(number)},
        TEMPLATE,
        then={"action": "schedule", "at": "2031-12-01T09:00:00", "time_zone": "America/Sao_Paulo"},
        return_state=True,
    )

    assert state.is_completed(), state.message
    result = state.result()
    row = campaign_row(db, uuid.UUID(result["campaign_id"]))
    at = datetime(2031, 12, 1, 12, tzinfo=UTC)  # 09:00 in São Paulo
    assert (row["status"], row["scheduled_at"], row["flow_run_id"]) == ("scheduled", at, result["flow_run_id"])
    run = prefect_run(row["flow_run_id"])
    assert (run.state.type.value, run.state.state_details.scheduled_time) == ("SCHEDULED", at)
    assert run.parameters == {"campaign_id": str(row["id"])} and run.name == f"send-campaign-{row['id']}"
    assert (
        "scheduled: draft -> scheduled, to start at 2031-12-01T12:00:00Z (2031-12-01 09:00 America/Sao_Paulo)"
        in (result["done"])
    )

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # Prefect down: the schedule holds
        offline = operator.control_campaign(
            db,
            org_name(db, org),
            str(row["id"]),
            "schedule",
            at="2031-12-02T09:00Z",
            runs=PrefectRuns(),
            credentials=fresh_credentials,
        )
    assert (offline.status, offline.flow_run_id) == ("scheduled", None)
    assert offline.done[-1] == "no Prefect run for it: campaign-scheduler starts it at its time"

    bad = create_campaign(
        org_name(db, org),
        {"name": "When?", "whatsapp_number": str(number)},
        TEMPLATE,
        then={"action": "schedule", "time_zone": "Mars/Olympus"},
        return_state=True,
    )
    assert bad.is_failed() and bad.message.startswith("time_zone: unknown time zone 'Mars/Olympus'")


# -- campaign-control ------------------------------------------------------------------------------------------


def control(db, org, campaign: str, action: str, **kwargs):
    return campaign_control(campaign, action, org_name(db, org), return_state=True, **kwargs)


@pytest.mark.flow
def test_campaign_control_schedules_reschedules_pauses_resumes_and_cancels_a_scheduled_campaign(
    db, org, sandbox, send_deployment
):
    number = add_sandbox_number(db, org, sandbox)
    cid = new_campaign(db, org, number, name="Natal")

    first = control(db, org, "Natal", "schedule", at="2031-12-24T08:00:00-03:00")
    assert first.is_completed(), first.message
    first_run = campaign_row(db, cid)["flow_run_id"]
    assert prefect_run(first_run).state.state_details.scheduled_time == datetime(2031, 12, 24, 11, tzinfo=UTC)
    assert first.result()["done"][0].startswith("scheduled: draft -> scheduled, to start at 2031-12-24T11:00:00Z")

    second = control(db, org, str(cid), "schedule", at="2031-12-25T10:00:00", time_zone="UTC")
    second_run = campaign_row(db, cid)["flow_run_id"]
    assert second.is_completed() and second_run != first_run
    assert prefect_run(first_run).state.type.value == "CANCELLED"  # Upcoming shows only the new time
    assert prefect_run(first_run).state.message == f"campaign {cid} was rescheduled to 2031-12-25T10:00:00Z"
    assert prefect_run(second_run).state.state_details.scheduled_time == datetime(2031, 12, 25, 10, tzinfo=UTC)

    paused = control(db, org, "Natal", "pause")
    assert paused.result()["done"] == ["paused: scheduled -> paused"]
    assert prefect_run(second_run).state.type.value == "CANCELLED"

    resumed = control(db, org, "Natal", "resume")  # it never started: back to scheduled, with a run again
    third_run = campaign_row(db, cid)["flow_run_id"]
    assert resumed.result()["status"] == "scheduled" and third_run not in (first_run, second_run)
    assert prefect_run(third_run).state.type.value == "SCHEDULED"

    cancelled = control(db, org, "Natal", "cancel")
    assert cancelled.result()["done"] == ["cancelled: scheduled -> cancelled"]
    assert prefect_run(third_run).state.type.value == "CANCELLED"

    refused = control(db, org, "Natal", "resume")
    assert refused.is_failed() and refused.message == "Cannot resume a cancelled campaign"
    refused = control(db, org, "Natal", "schedule", at="2031-12-26T10:00:00Z")
    assert refused.is_failed() and refused.message == "Cannot schedule a cancelled campaign"
    no_time = control(db, org, "Natal", "schedule")
    assert no_time.is_failed() and no_time.message == "at: give the date and time the campaign should start"


@pytest.mark.flow
def test_campaign_control_starts_pauses_resumes_and_retries_failures_through_send_campaign_runs(
    db, org, sandbox, send_deployment
):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(3, start=7300)])
    cid = new_campaign(db, org, number, name="Black Friday")
    new_campaign(db, org, number, name="Twice")
    twice = new_campaign(db, org, number, name="Twice")

    started = control(db, org, "Black Friday", "start")
    assert started.is_completed(), started.message
    assert (started.result()["status"], started.result()["total_recipients"]) == ("running", 3)
    assert campaign_row(db, cid)["flow_run_id"] == started.result()["flow_run_id"]

    paused = control(db, org, "Black Friday", "pause")
    assert paused.result()["done"] == ["paused: running -> paused"]
    assert control(db, org, "Black Friday", "pause").message == "Cannot pause a paused campaign"

    resumed = control(db, org, str(cid), "resume")
    run_id = resumed.result()["flow_run_id"]
    assert resumed.result()["status"] == "running" and campaign_row(db, cid)["flow_run_id"] == run_id
    assert prefect_run(run_id).parameters == {"campaign_id": str(cid)}
    assert resumed.result()["done"] == ["resumed: paused -> running", f"send-campaign flow run {run_id} will send it"]

    nothing = control(db, org, "Black Friday", "retry-failed")
    assert nothing.is_failed() and nothing.message == "No failed recipient to retry"
    with db.begin() as conn:  # two failed sends, one of them an opt-out (never retried)
        conn.execute(
            sa.text("""
            insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, error_code)
            values (:c, :o, gen_random_uuid(), '+5511900007400', 'failed', 131026),
                   (:c, :o, gen_random_uuid(), '+5511900007401', 'failed', 131049)"""),
            {"c": cid, "o": org},
        )
        lifecycle.pause(conn, org, cid)
    retried = control(db, org, "Black Friday", "retry-failed", error_codes=[131026])
    assert retried.is_completed(), retried.message
    assert retried.result()["done"][0] == (
        "retry-failed: paused -> running; 1 failed recipients with code 131026 back to pending"
    )
    assert campaign_row(db, cid)["flow_run_id"] == retried.result()["flow_run_id"] != run_id

    ambiguous = control(db, org, "Twice", "pause")
    assert ambiguous.is_failed()
    assert ambiguous.message.startswith("campaign: 2 campaigns are named 'Twice'; give the id of the one you mean; ")
    assert str(twice) in ambiguous.message and "(draft, created " in ambiguous.message
    missing = control(db, org, "Nope", "cancel")
    assert missing.is_failed()
    assert missing.message == "Campaign not found: no campaign named 'Nope' in this organization"
    with db.begin() as conn:
        lifecycle.cancel(conn, org, cid)


def test_campaign_control_needs_the_organization_only_for_a_campaign_given_by_name(db, org, sandbox):
    """The form's organization is optional: a campaign's id says whose it is; a name may exist in two
    organizations, so without one it is refused naming the field (the form used to just stay open)."""
    from campaigns.errors import Invalid

    number = add_sandbox_number(db, org, sandbox)
    cid = new_campaign(db, org, number, name="Natal")

    with pytest.raises(Invalid, match=r"^organization: needed when the campaign is given by name"):
        operator.control_campaign(db, None, "Natal", "cancel", runs=PrefectRuns(), credentials=fresh_credentials)
    out = operator.control_campaign(db, None, str(cid), "cancel", runs=PrefectRuns(), credentials=fresh_credentials)
    assert out.status == "cancelled" and campaign_row(db, cid)["status"] == "cancelled"
