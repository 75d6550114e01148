"""/metrics scraped while a campaign runs, over real HTTP: its counters agree with the campaign's statistics
(sent, failed by code, the provider's 130429 answers), and the receiver counts the webhooks it took and
refused."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from campaigns import api_tokens
from campaigns.api import create_app
from campaigns.infra.asgi_thread import ThreadedServer
from sandbox.config import FailureRule
from tests.helpers import add_contacts, add_sandbox_number, api_client, phones, wait_for
from tests.test_api import FlowInThread


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_scraped_during_a_campaign_match_its_statistics(db, org, sandbox):
    launcher = FlowInThread()
    server = ThreadedServer(create_app(launcher, ready=lambda: None, db=db)).start()
    try:
        number = add_sandbox_number(db, org, sandbox, mps=50)
        contacts = phones(120)
        add_contacts(db, org, [{"phone": p, "inbound_hours_ago": 1} for p in contacts])
        # Numbers ending in 7 are refused for good (131026: not on WhatsApp); a few sends meet a 130429.
        sandbox.configure(rules=[FailureRule(match="7$", code=131026), FailureRule(match="3$", code=130429, times=1)])
        with db.begin() as conn:
            token = api_tokens.issue(conn, org, "agent")[1]
        http = api_client(server.url + "/api/v1", token)
        body = {
            "name": "Metrics",
            "whatsapp_number_id": str(number),
            "message_type": "text",
            "message_content": {"text": "Oi"},
            "messages_per_hour": None,
            "delay_between_messages_seconds": 0,
            "retry_base_delay": 10,
        }
        cid = http.post("/campaigns", json=body).json()["id"]
        before = scrape(server.url)
        assert http.post(f"/campaigns/{cid}/start").status_code == 200
        during = []
        deadline = time.monotonic() + 120
        while http.get(f"/campaigns/{cid}/progress").json()["current_status"] != "completed":
            assert time.monotonic() < deadline, "the campaign did not complete in 120 s"
            started = time.monotonic()
            during.append((scrape(server.url), time.monotonic() - started))
            time.sleep(0.3)
        launcher.threads[0].join(timeout=30)
        wait_for(lambda: delta(scrape(server.url), before, "campaigns_messages_sent_total") > 0, timeout=10)
        after = scrape(server.url)
        stats = http.get(f"/campaigns/{cid}/stats").json()
        expected_failed = sum(p.endswith("7") for p in contacts)
        assert (stats["messages_failed"], stats["failures_by_code"]) == (expected_failed, {"131026": expected_failed})
        assert delta(after, before, "campaigns_messages_sent_total") == stats["messages_sent"] == 120 - expected_failed
        assert delta(after, before, "campaigns_messages_failed_total", code="131026") == expected_failed
        assert delta(after, before, "campaigns_rate_limit_answers_total") == sum(p.endswith("3") for p in contacts)
        assert delta(after, before, "campaigns_send_batch_seconds_count") >= 2
        assert after[("campaigns_by_status", (("status", "completed"),))] >= 1
        assert ("campaigns_ingestion_lag_seconds", ()) in after
        assert during, "scraped while it ran"
        sent_during = [delta(s, before, "campaigns_messages_sent_total") for s, _ in during]
        assert sent_during == sorted(sent_during)  # a counter only grows
    finally:
        sandbox.configure(rules=[])
        server.stop()


def test_the_receiver_counts_what_it_took_and_what_it_refused(receiver):
    base = receiver.rsplit("/webhooks", 1)[0]
    before = httpx.get(base + "/metrics").text
    r = httpx.post(
        receiver,
        content=b'{"object":"whatsapp_business_account"}',
        headers={"X-Hub-Signature-256": "sha256=" + "0" * 64},
    )
    assert r.status_code == 401
    after = httpx.get(base + "/metrics").text

    def refused(text: str) -> float:
        return next(
            (
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "webhooks_rejected_total" and s.labels == {"reason": "signature"}
            ),
            0.0,
        )

    assert refused(after) == refused(before) + 1
