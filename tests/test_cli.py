"""The command line as the README, the demo and acceptance checks use it: real processes, real services."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers import cli


@pytest.mark.flow
def test_a_campaign_from_the_command_line(tmp_path, sandbox):
    assert cli("db", "upgrade").stdout == ""
    org = f"cli-{uuid.uuid4().hex[:8]}"
    org_id = cli("orgs", "add", org).stdout.strip()
    assert uuid.UUID(org_id)
    pnid = "5550001"
    sandbox.set_token(pnid, "cli-token")
    number_id = cli(
        "numbers",
        "add",
        "--org",
        org,
        "--provider",
        "sandbox",
        "--phone-number-id",
        pnid,
        "--token",
        "cli-token",
        "--app-secret",
        "sandbox-app-secret",
        "--verify-token",
        "v",
        "--api-base",
        sandbox.url,
        "--mps",
        "200",
    ).stdout.strip()
    assert uuid.UUID(number_id)
    assert (
        "cli-token"
        not in cli(
            "numbers",
            "add",
            "--org",
            org,
            "--provider",
            "sandbox",
            "--phone-number-id",
            pnid,
            "--token",
            "cli-token",
            "--api-base",
            sandbox.url,
        ).stderr
    )

    csv = tmp_path / "contacts.csv"
    csv.write_text(
        "phone,name,tags,opted_out\n"
        + "".join(f"+55119000{i:05d},Ana {i},,false\n" for i in range(30))
        + "oops,Bad,,false\n+5511900000001,Dup,,false\n"
    )
    imported = cli("contacts", "import", str(csv), "--org", org)
    assert imported.stdout.strip() == "30"
    assert "line 32: invalid phone 'oops'" in imported.stderr
    assert "line 33: duplicate phone (first seen on line 3)" in imported.stderr

    body = {
        "name": "CLI",
        "whatsapp_number_id": number_id,
        "message_type": "template",
        "message_content": {"template_name": "promo", "language": "pt_BR"},
        "template_variables": {"body": ["{{contact.name}}"]},
        "messages_per_hour": None,
        "delay_between_messages_seconds": 0,
    }
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**body, "retry_max_attempts": 99}))
    refused = cli("create", str(bad), "--org", org, check=False)
    assert refused.returncode == 2 and "retry_max_attempts" in refused.stderr
    good = tmp_path / "campaign.json"
    good.write_text(json.dumps(body))
    campaign_id = cli("create", str(good), "--org", org).stdout.strip()

    started = cli("start", campaign_id, "--wait")
    assert started.stdout.strip() == campaign_id

    stats = json.loads(cli("stats", campaign_id, "--json").stdout)
    assert stats["total_recipients"] == 30 and stats["messages_sent"] == 30 and stats["messages_pending"] == 0
    for key in (
        "messages_delivered",
        "messages_read",
        "messages_failed",
        "delivery_rate",
        "read_rate",
        "reply_rate",
        "error_count",
        "last_error_message",
    ):
        assert key in stats
    progress = json.loads(cli("progress", campaign_id, "--json").stdout)
    assert progress["progress_percentage"] == 100.0 and progress["current_status"] == "completed"
    assert progress["estimated_remaining_time"] == "00:00:00"
    assert len(sandbox.messages()) == 30

    again = cli("pause", campaign_id, check=False)
    assert again.returncode == 1 and "Cannot pause a completed campaign" in again.stderr
    missing = cli("stats", str(uuid.uuid4()), check=False)
    assert missing.returncode == 1 and "Campaign not found" in missing.stderr
    listed = cli("list", "--org", org)
    assert listed.stdout.split()[:3] == [campaign_id, "completed", "30"]


def test_number_limits_and_portfolios_from_the_command_line(sandbox):
    org = f"cli-{uuid.uuid4().hex[:8]}"
    cli("orgs", "add", org)
    portfolio = cli("portfolios", "add", "main", "--org", org, "--limit", "2000").stdout.strip()
    number = cli(
        "numbers",
        "add",
        "--org",
        org,
        "--provider",
        "sandbox",
        "--phone-number-id",
        "5550077",
        "--token",
        "t",
        "--api-base",
        sandbox.url,
        "--per-day",
        "500",
        "--portfolio",
        portfolio,
    ).stdout.strip()
    limits = json.loads(cli("numbers", "limits", number, "--org", org, "--preset", "meta-conservative").stdout)
    assert limits == {
        "mps": 80,
        "per_minute": 20,
        "per_hour": 100,
        "per_day": 500,
        "portfolio_id": portfolio,
        "portfolio_limit": 2000,
    }
    limits = json.loads(cli("numbers", "limits", number, "--org", org, "--per-day", "none", "--mps", "1000").stdout)
    assert (limits["per_day"], limits["per_hour"], limits["mps"]) == (None, 100, 1000)
    bad = cli("numbers", "limits", number, "--org", org, "--per-hour", "0", check=False)
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def test_orgs_list_names_every_organization_so_a_newcomer_can_find_the_demos(db, sandbox):
    """`make demo` names its organization `demo <time>`: `orgs list` is how one finds it to mint a token."""
    from tests.helpers import add_sandbox_number, new_org

    org = new_org(db, prefix="listed")
    add_sandbox_number(db, org, sandbox)
    listed = {o["id"]: o for o in json.loads(cli("orgs", "list", "--json").stdout)}
    assert listed[str(org)]["numbers"] == 1 and listed[str(org)]["campaigns"] == 0
    assert listed[str(org)]["name"].startswith("listed-")
    table = cli("orgs", "list")
    assert str(org) in table.stdout and "organizations" in table.stderr


@pytest.mark.flow
def test_the_demo_runs_a_whole_campaign_and_says_its_rate_against_the_cap(db):
    """`make demo` is a newcomer's first campaign: it completes, and it says what rate it held against which cap
    and how often the provider said too fast (a few hundred contacts here; the README's figure is 10,000)."""
    done = cli("demo", "--contacts", "400")
    stats = json.loads(done.stdout)
    assert "its run in Prefect: Completed" in done.stderr
    # 400 lines, 2 of them bad phones and one more a duplicate, refused at the import; 8 contacts opted out
    assert (stats["total_recipients"], stats["messages_sent"], stats["messages_skipped"]) == (398, 390, 8), stats
    assert "msg/s sustained against the number's cap of 1,000 msg/s" in done.stderr
    assert "the provider answered 130429 (too fast) 0 times" in done.stderr
