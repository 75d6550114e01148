"""The embedded Prefect server an operator opens: its UI must talk to its own API, whatever the port."""

from __future__ import annotations

import os

import httpx


def test_the_ui_points_at_its_own_server(services):
    from campaigns.infra.embedded import ui_api_url

    api_url = os.environ["PREFECT_API_URL"]
    assert not api_url.startswith("http://127.0.0.1:4200")  # the tests' server is on another port than Prefect's
    assert ui_api_url(api_url) == api_url
    page = httpx.get(api_url.removesuffix("/api") + "/", timeout=5.0)
    assert page.status_code == 200 and "<html" in page.text.lower()
