"""The operator console: the Prefect server's UI, in headless Chromium, while `campaigns serve` runs.

The server's root URL lands on the v2 UI (`/ui-settings`: default_ui "v2" at /v2; v1 stays at / paths
such as /deployments), so these tests start at the root and click through as an operator does.

The last two are an operator's day end to end: create-campaign's form filled in and submitted, the
campaign's run found on the Runs page by its name, its log and summary artifact; then campaign-control's
form starting and pausing a slower campaign (its run Suspended), Resume and Cancel in the run's menu (the
run Cancelled, the campaign only paused). They wait on the UI with expect() and on Prefect's API and the
database by polling; screenshots 05-… to 12-… come from them.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, Route, expect
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.states import State

from tests.browser import api_url, off_the_loop, screenshot, ui_url
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    create_campaign,
    new_org,
    org_name,
    phone_number_id,
    phones,
    prefect_run,
    sent_counts,
    wait_for,
)

pytest_plugins = ["tests.browser"]  # its fixtures: campaigns_serve, browser, page
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("serve")]  # one worker, one serve (see Makefile)

CANT_CONNECT = "Can't connect to Server API"
SERVED = ("send-campaign", "ingest-statuses", "campaign-scheduler")
TALL = {"width": 1440, "height": 1200}  # a run page with its whole log under the graph


def deployment_row(page: Page, flow: str):
    """The Deployments table's row of `<flow>/default` (other deployments of the flow may be listed too)."""
    return (
        page.get_by_role("row").filter(has_text=flow).filter(has=page.get_by_role("link", name="default", exact=True))
    )


def open_deployments(page: Page) -> None:
    page.goto(ui_url("/"))
    page.get_by_role("link", name="Deployments", exact=True).click()
    expect(page).to_have_url(re.compile(r"/v2/deployments\b"))


@pytest.mark.flow
def test_the_root_url_opens_the_v2_dashboard_and_it_reaches_this_servers_api(page: Page, campaigns_serve):
    settings = httpx.get(ui_url("/ui-settings"), timeout=5.0).json()
    assert (settings["default_ui"], settings["v2_base_url"], settings["api_url"]) == ("v2", "/v2", api_url())

    with page.expect_response(lambda r: r.url.startswith(api_url() + "/") and r.ok):  # data from this API
        page.goto(ui_url("/"))
    expect(page).to_have_url(re.compile(r"/v2/dashboard\b"))
    # A card filled from the API: the run counts, or the empty state of a server that never ran a flow.
    expect(
        page.get_by_text("Flow Runs", exact=True).or_(page.get_by_text("Run a task or flow to get started")).first
    ).to_be_visible()
    expect(page.get_by_text(CANT_CONNECT)).to_have_count(0)
    screenshot(page, "01-dashboard")


def test_a_ui_pointed_at_an_unreachable_api_says_it_cannot_connect(page: Page):
    """The check above means something: the same UI told its API is on a closed port shows the message."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/api"

    def elsewhere(route: Route) -> None:
        response = route.fetch()
        route.fulfill(response=response, body=json.dumps({**response.json(), "api_url": closed}))

    page.route("**/ui-settings", elsewhere)
    page.goto(ui_url("/"))
    expect(page.get_by_text(f"{CANT_CONNECT} at {closed}")).to_be_visible()


@pytest.mark.flow
def test_the_deployments_page_lists_the_three_served_deployments_ready(page: Page, campaigns_serve):
    open_deployments(page)
    for flow in SERVED:
        row = deployment_row(page, flow)
        expect(row).to_have_count(1)
        expect(row).to_contain_text("Ready")  # polled by `campaigns serve` within the last minute
    for flow in ("ingest-statuses", "campaign-scheduler"):  # tagged apart from the campaigns they serve
        expect(deployment_row(page, flow)).to_contain_text("housekeeping")
    expect(page.get_by_text(CANT_CONNECT)).to_have_count(0)
    screenshot(page, "02-deployments")


@pytest.mark.flow
def test_the_send_campaign_deployment_page_and_its_run_form(page: Page, campaigns_serve):
    deployment = httpx.get(f"{api_url()}/deployments/name/send-campaign/default", timeout=5.0).json()
    open_deployments(page)
    deployment_row(page, "send-campaign").get_by_role("link", name="default", exact=True).click()

    expect(page).to_have_url(re.compile(rf"/v2/deployments/deployment/{deployment['id']}\b"))
    # The details first: until they show, the Deployments table (whose rows link to the flow too) may still be up.
    expect(page.get_by_text("flows/send_campaign.py:send_campaign", exact=True)).to_be_visible()
    expect(page.get_by_text(deployment["id"], exact=True)).to_be_visible()
    expect(page.get_by_text("Ready", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="send-campaign", exact=True).first).to_be_visible()  # breadcrumb, Flow
    expect(page.get_by_text("Triggers", exact=True)).to_be_visible()  # the schedules and triggers have loaded
    screenshot(page, "03-send-campaign")

    # Run > Custom run: the form an operator fills with a campaign's id (not submitted here).
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()
    expect(page).to_have_url(re.compile(rf"/v2/deployments/deployment/{deployment['id']}/run\b"))
    expect(page.get_by_text("campaign_id", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Submit")).to_be_visible()
    screenshot(page, "04-send-campaign-run-form")


# -- an operator's day: create and start a campaign from its form, read its run, cancel and pause one --------


def _logs(run_id: uuid.UUID | str) -> str:
    with get_client(sync_client=True) as client:
        entries = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(str(run_id))])), limit=200
        )
    return "\n".join(entry.message for entry in entries)


def _wait_for_log(run_id: uuid.UUID | str, *lines: str, timeout: float = 20.0) -> None:
    """A run's log reaches the API in batches, after its final state may have: poll until it has `lines`."""
    try:
        wait_for(lambda: all(line in _logs(run_id) for line in lines), timeout=timeout, interval=0.2)
    except AssertionError:
        logs = _logs(run_id)
        missing = [line for line in lines if line not in logs]
        raise AssertionError(f"{missing} not in the log of run {run_id}:\n{logs}") from None


def _wait_for_state(run_id: uuid.UUID | str, done: Callable[[State], bool], timeout: float = 60.0) -> State:
    """Polls Prefect's API until the run's state satisfies `done`; returns that state."""
    seen: list[State] = []

    def reached() -> bool:
        state = prefect_run(str(run_id)).state
        seen.append(state)
        return state is not None and done(state)

    wait_for(reached, timeout=timeout, interval=0.2)
    return seen[-1]


def open_run_form(page: Page, flow: str) -> None:
    """Deployments → <flow>/default → Run → Custom run: the deployment's parameter form."""
    open_deployments(page)
    deployment_row(page, flow).get_by_role("link", name="default", exact=True).click()
    expect(page.get_by_text(f"flows/{flow.replace('-', '_')}.py:{flow.replace('-', '_')}", exact=True)).to_be_visible()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()
    expect(page.get_by_role("button", name="Submit")).to_be_visible()


def choose(page: Page, field: str, option: str) -> None:
    """A Literal field is a dropdown: its button says "Select <title>", its choices are options."""
    page.get_by_role("button", name=f"Select {field}").click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(page.get_by_role("button", name=f"Select {field}")).to_have_text(option)
    expect(page.get_by_role("listbox")).to_have_count(0)  # faded out: a screenshot shows the form alone


def fill_json(editor, text: str, attempts: int = 3) -> None:
    """A JSON editor (CodeMirror): fill() selects its text and replaces it; typing would get brackets and
    quotes closed for us. While the form still renders, the selection may fall back to the start and the
    default "{}" stay after the text: look, and fill again, as an operator would."""
    expect(editor).to_have_text("{}")  # its default is in
    for attempt in range(attempts):
        editor.fill(text)
        try:
            expect(editor).to_have_text(text, timeout=2_000)
            return
        except AssertionError:
            if attempt == attempts - 1:
                raise


def press(button, endpoint: str, attempts: int = 3) -> dict:
    """Press a button that POSTs to Prefect's `endpoint`; returns the answer's JSON. A busy Prefect server on
    SQLite answers 503 ("database is locked", nothing done) and the UI only shows a toast: press again, as an
    operator would (Prefect's Python client retries those by itself; its UI does not)."""
    for attempt in range(attempts):
        with button.page.expect_response(lambda r: r.url.endswith(endpoint) and r.request.method == "POST") as sent:
            button.click()
        if sent.value.status != 503 or attempt == attempts - 1:
            break
    assert sent.value.ok, f"{sent.value.status}: {sent.value.text()}"
    return sent.value.json()


def submit(page: Page) -> dict:
    """Submit the form; returns the flow run Prefect created (id, parameters as the form sent them)."""
    return press(page.get_by_role("button", name="Submit"), "/create_flow_run")


def control_campaign(page: Page, organization: str, campaign: str, action: str, shot: str | None = None) -> State:
    """campaign-control's form: the organization, the campaign by name, the action; its run's final state."""
    open_run_form(page, "campaign-control")
    page.get_by_role("textbox", name=re.compile(r"^organization\b")).fill(organization)  # optional now
    page.get_by_role("textbox", name="campaign", exact=True).fill(campaign)
    choose(page, "action", action)
    if shot:
        screenshot(page, shot)
    run = submit(page)
    assert {k: run["parameters"][k] for k in ("organization", "campaign", "action")} == {
        "organization": organization,
        "campaign": campaign,
        "action": action,
    }
    return _wait_for_state(run["id"], lambda s: s.is_final())


def open_campaign_run(page: Page, name: str, state: str) -> None:
    """Runs → search by the run's name → the run listed in `state` (a campaign may have had several runs)."""
    page.get_by_role("link", name="Runs", exact=True).first.click()  # the sidebar's (a run page's breadcrumb too)
    expect(page).to_have_url(re.compile(r"/v2/runs\?tab=flow-runs\b"))
    page.get_by_placeholder("Search by flow run name").fill(name)
    # The box applies the search 1.2 s after the last key. A run clicked before that (the newest is listed
    # already) opens, then the late search lands on its page's query (`/v2/runs?tab=Logs&flow-run-search=…`),
    # and the Runs page says "Something went wrong". Wait until the search is in the address.
    expect(page).to_have_url(re.compile(re.escape(urlencode({"flow-run-search": name}))))
    listed = page.get_by_role("listitem").filter(has=page.get_by_role("link", name=name, exact=True))
    listed.filter(has_text=state).get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("tab", name="Logs")).to_have_attribute("aria-selected", "true")


def log_line(page: Page, start: str):
    """The line of the run's log (the Logs tab) that starts with `start` (a final state's line quotes others)."""
    return page.get_by_role("log").get_by_text(re.compile("^" + re.escape(start)))


def newest_first(page: Page) -> None:
    """The Logs tab's sort order: the latest lines at the top."""
    page.get_by_role("combobox", name="log sort order").click()
    page.get_by_role("option", name="Newest to oldest").click()
    expect(page.get_by_role("combobox", name="log sort order")).to_have_text("Newest to oldest")


def run_screenshot(page: Page, name: str) -> None:
    """A run page, once its graph is drawn (until then a grey placeholder stands in its place)."""
    expect(page.locator("main canvas")).to_be_visible()
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    screenshot(page, name)


def state_badge(page: Page, state: str):
    """The run's state as its page shows it, next to its name."""
    return page.locator("main").get_by_text(state, exact=True).first


@pytest.mark.flow
def test_an_operator_creates_and_starts_a_campaign_from_its_form_and_reads_its_run(
    page: Page, db, sandbox, campaigns_serve
):
    # What the operator has before opening the UI: an organization, its WhatsApp number, its contacts.
    org = new_org(db, "acme")
    org_name_ = org_name(db, org)
    number = off_the_loop(add_sandbox_number, db, org, sandbox)  # saves the number's credentials block
    pnid = phone_number_id(db, number)
    add_contacts(db, org, [{"phone": p, "name": f"Cliente {i}"} for i, p in enumerate(phones(30, start=8000))])
    page.set_viewport_size(TALL)

    open_run_form(page, "create-campaign")
    page.get_by_role("textbox", name="organization", exact=True).fill(org_name_)
    page.get_by_role("textbox", name="Name", exact=True).fill("Boas-vindas")
    page.get_by_role("textbox", name="WhatsApp number", exact=True).fill(pnid)
    choose(page, "Message type", "template")
    page.get_by_role("textbox", name="Template name (Optional)").fill("boas_vindas")
    page.get_by_role("textbox", name="Template language (Optional)").fill("pt_BR")
    fill_json(page.locator(".cm-content"), '{"body": ["{{contact.name}}"]}')  # the form's only JSON editor
    choose(page, "Audience", "all_contacts")
    page.get_by_role("tab", name="No campaign cap").click()  # Messages per hour: int | None, one tab each
    page.get_by_role("spinbutton", name="Delay between messages (s) (Optional)").fill("0")
    choose(page, "Then", "start")
    expect(page.get_by_role("tab", name="Not scheduled")).to_have_attribute("aria-selected", "true")
    screenshot(page, "05-create-campaign-form", full_page=True)

    run = submit(page)
    assert run["parameters"] == {
        "organization": org_name_,
        "campaign": {"name": "Boas-vindas", "description": "", "whatsapp_number": pnid},
        "message": {
            "message_type": "template",
            "text": "",
            "template_name": "boas_vindas",
            "language": "pt_BR",
            "template_variables": {"body": ["{{contact.name}}"]},
        },
        "audience": {
            "audience_type": "all_contacts",
            "tags": [],
            "match": "any",
            "contact_ids": [],
            "respect_opt_out": True,
            "skip_active_conversations": False,
        },
        "pace": {
            "messages_per_hour": None,
            "delay_between_messages_seconds": 0,
            "retry_max_attempts": 3,
            "retry_base_delay": 60,
            "retry_max_delay": 3600,
        },
        "then": {"action": "start", "at": None, "time_zone": "America/Sao_Paulo"},
    }
    state = _wait_for_state(run["id"], lambda s: s.is_final())
    assert state.is_completed(), state.message
    with db.connect() as conn:
        campaign = (
            conn.execute(
                sa.text("select id, status, flow_run_id from campaigns where organization_id = :o"), {"o": org}
            )
            .mappings()
            .one()
        )
    _wait_for_log(
        run["id"],
        f"created campaign {campaign['id']} 'Boas-vindas' (template, audience all_contacts) as a draft",
        f"started campaign {campaign['id']} 'Boas-vindas': audience of 30 contacts",
        f"send-campaign flow run {campaign['flow_run_id']} will send it",
    )

    # The toast's "View run": the create-campaign run, named after the campaign, tells what it did.
    page.get_by_role("link", name="View run").click()
    expect(page).to_have_url(re.compile(rf"/v2/runs/flow-run/{run['id']}\b"))
    expect(page.get_by_role("tab", name="Logs")).to_be_visible()  # the run's page has replaced the deployment's
    expect(page.get_by_role("navigation", name="breadcrumb")).to_contain_text("create-campaign: Boas-vindas")
    expect(state_badge(page, "Completed")).to_be_visible()
    expect(log_line(page, f"send-campaign flow run {campaign['flow_run_id']} will send it")).to_be_visible()
    run_screenshot(page, "06-create-campaign-run")

    # The campaign's own run: found on the Runs page by its name, Completed, its story in its log.
    sent = _wait_for_state(campaign["flow_run_id"], lambda s: s.is_final())
    assert sent.is_completed() and sent.message.startswith("Campaign completed: 30 sent"), sent.message
    run_name = f"Boas-vindas · {org_name_}"
    open_campaign_run(page, run_name, "Completed")
    expect(page.get_by_text(run_name, exact=True).first).to_be_visible()
    expect(state_badge(page, "Completed")).to_be_visible()
    expect(page.get_by_text(f"org:{org_name_}", exact=True).first).to_be_visible()
    expect(log_line(page, "audience built: 30 to send of 30 contacts")).to_be_visible()
    expect(log_line(page, "campaign completed: 30 sent,")).to_be_visible()
    run_screenshot(page, "07-campaign-run-logs")

    # Its Artifacts tab: the summary's card opens the markdown, rendered.
    page.get_by_role("tab", name="Artifacts").click()
    summary = f"campaign-{campaign['id']}-summary"
    expect(page.get_by_role("heading", name=f"campaign-{campaign['id']}-failures")).to_be_visible()
    page.get_by_role("link").filter(has=page.get_by_role("heading", name=summary, exact=True)).click()
    expect(page.get_by_role("heading", name=run_name, level=1)).to_be_visible()
    expect(page.get_by_text("Status: completed")).to_be_visible()
    expect(page.get_by_role("row", name="sent 30")).to_be_visible()
    screenshot(page, "08-campaign-summary-artifact")


@pytest.mark.flow
def test_campaign_control_pauses_a_sending_campaign_resume_and_cancel_on_its_run_page_do_what_they_say(
    page: Page, db, sandbox, campaigns_serve
):
    # A slow campaign: 150 contacts on a number allowed 2 messages a second, a draft until the operator starts it.
    org = new_org(db, "acme")
    org_name_ = org_name(db, org)
    number = off_the_loop(add_sandbox_number, db, org, sandbox, mps=2)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(150, start=9000)])
    cid = create_campaign(db, org, number, name="Natal", messages_per_hour=None, delay_between_messages_seconds=0)
    run_name = f"Natal · {org_name_}"
    page.set_viewport_size(TALL)

    started = control_campaign(page, org_name_, "Natal", "start", shot="09-campaign-control-form")
    assert started.is_completed(), started.message
    run_id = campaign_row(db, cid)["flow_run_id"]
    _wait_for_state(run_id, lambda s: s.is_running(), timeout=30)
    wait_for(lambda: len(sandbox.messages()) >= 5, timeout=30)  # sending

    # campaign-control's pause: the campaign's run suspends itself (no process held), the reason as its message.
    paused = control_campaign(page, org_name_, "Natal", "pause")
    assert paused.is_completed(), paused.message
    suspended = _wait_for_state(run_id, lambda s: s.is_paused(), timeout=30)
    assert suspended.name == "Suspended" and suspended.message.startswith("Campaign paused (operator).")
    _wait_for_log(run_id, "campaign paused (operator). Resume it to send the rest")
    open_campaign_run(page, run_name, "Suspended")
    expect(state_badge(page, "Suspended")).to_be_visible()
    expect(log_line(page, "campaign paused (operator). Resume it to send the rest")).to_be_visible()
    newest_first(page)
    run_screenshot(page, "10-suspended-campaign-run")
    held = len(sent_counts(sandbox))
    assert held < 150

    # Resume, from the run's menu: the same run wakes and the campaign sends again.
    page.get_by_role("button", name="Open menu").click()
    page.get_by_role("menuitem", name="Resume").click()
    dialog = page.get_by_role("dialog", name="Resume Flow Run")
    expect(dialog).to_contain_text(f"Resume the paused flow run {run_name}?")
    press(dialog.get_by_role("button", name="Resume", exact=True), "/resume")
    expect(state_badge(page, "Running")).to_be_visible(timeout=45_000)  # once `campaigns serve` has taken it up
    wait_for(lambda: campaign_row(db, cid)["status"] == "running" and len(sent_counts(sandbox)) > held, timeout=30)

    # Cancel, from the same menu, confirmed in Prefect's dialog: the run ends Cancelled, the campaign is paused.
    page.get_by_role("button", name="Open menu").click()
    page.get_by_role("menuitem", name="Cancel").click()
    dialog = page.get_by_role("alertdialog", name="Cancel Flow Run")
    expect(dialog).to_contain_text(f"Are you sure you want to cancel {run_name}?")
    screenshot(page, "11-cancel-dialog")
    press(dialog.get_by_role("button", name="Cancel Flow Run"), "/set_state")
    expect(state_badge(page, "Cancelled")).to_be_visible()
    wait_for(lambda: campaign_row(db, cid)["status"] != "running", timeout=10)
    campaign = campaign_row(db, cid)
    assert (campaign["status"], campaign["paused_reason"]) == ("paused", "operator")
    assert _wait_for_state(run_id, lambda s: s.is_final()).is_cancelled()
    # The page stops reading the log once the run is final; the run's last lines reach the API after that.
    said = "campaign paused (operator): Cancel was pressed on its run in the Prefect UI: the campaign is paused"
    _wait_for_log(run_id, said)
    page.reload()
    expect(log_line(page, said)).to_be_visible()
    newest_first(page)
    run_screenshot(page, "12-cancelled-campaign-run")
    assert len(sent_counts(sandbox)) < 150 and set(sent_counts(sandbox).values()) == {1}
