"""The operator console: the Prefect server's UI, in headless Chromium, while `campaigns serve` runs.

The server's root URL lands on the v2 UI (`/ui-settings`: default_ui "v2" at /v2; v1 stays at / paths
such as /deployments), so these tests start at the root and click through as an operator does.
"""

from __future__ import annotations

import json
import re
import socket

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser import api_url, screenshot, ui_url

pytest_plugins = ["tests.browser"]  # its fixtures: campaigns_serve, browser, page
pytestmark = pytest.mark.browser

CANT_CONNECT = "Can't connect to Server API"
SERVED = ("send-campaign", "ingest-statuses", "campaign-scheduler")


def deployment_row(page: Page, flow: str):
    """The Deployments table's row of `<flow>/default` (other deployments of the flow may be listed too)."""
    return (page.get_by_role("row").filter(has_text=flow)
            .filter(has=page.get_by_role("link", name="default", exact=True)))


def open_deployments(page: Page) -> None:
    page.goto(ui_url("/"))
    page.get_by_role("link", name="Deployments", exact=True).click()
    expect(page).to_have_url(re.compile(r"/v2/deployments\b"))


def test_the_root_url_opens_the_v2_dashboard_and_it_reaches_this_servers_api(page: Page, campaigns_serve):
    settings = httpx.get(ui_url("/ui-settings"), timeout=5.0).json()
    assert (settings["default_ui"], settings["v2_base_url"], settings["api_url"]) == ("v2", "/v2", api_url())

    with page.expect_response(lambda r: r.url.startswith(api_url() + "/") and r.ok):  # data from this API
        page.goto(ui_url("/"))
    expect(page).to_have_url(re.compile(r"/v2/dashboard\b"))
    # A card filled from the API: the run counts, or the empty state of a server that never ran a flow.
    expect(page.get_by_text("Flow Runs", exact=True).or_(page.get_by_text("Run a task or flow to get started"))
           .first).to_be_visible()
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
