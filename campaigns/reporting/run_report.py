"""What a campaign's run tells an operator, in words: its log lines, its final message, its summary.

Plain functions over the campaign's rows (no Prefect): `flows/console.py` puts them in the Prefect UI as
log lines, the run's final state message and its artifacts. Every figure is read from the recipient rows,
so a summary refreshed after completion (statuses keep arriving) is as exact as the statistics.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from campaigns.control import lifecycle
from campaigns.reporting import stats
from campaigns.store.db import iso_z

# What the operator should do about each pause reason (campaigns.sending.error_codes.PAUSE_REASONS and the send path).
ADVICE: dict[str, str] = {
    "operator": "Resume it to send the rest (Resume on this run in the Prefect UI, campaign-control, or the API).",
    "rate_limit": "The number's hourly or daily cap is used up; it resumes by itself when the window ends.",
    "auth_error": "The number's token was refused: save a valid token in its whatsapp-number-credentials block, "
    "then resume.",
    "payment": "Meta refused to bill the account: fix the payment method in Meta Business Manager, then resume.",
    "quality": "Meta limited the number for quality or spam: check the number in WhatsApp Manager before resuming.",
    "template_paused": "The template was paused or disabled by Meta: use another approved template, then resume.",
    "template_error": "The template or its variables do not match what Meta approved: fix them, then resume.",
    "circuit_breaker": "Too many sends failed in a row: look at the failures by code below, fix the cause, resume.",
    "provider_error": "The provider refused the campaign: read the error, fix the cause, then resume.",
    "preflight_failed": "The pre-launch checklist failed at its scheduled time: fix the checks listed, then resume.",
    "runner_failed": "Its run failed or its runner was lost repeatedly: read that run's logs, then resume.",
    "launch_failed": "It could not be handed to Prefect: with `campaigns serve` (or a worker) running, resume it.",
}


def _n(value: int) -> str:
    return f"{value:,}"


def run_name(campaign: dict[str, Any]) -> str:
    """A run named so an operator finds it: the campaign, then its organization."""
    return f"{campaign['name']} · {campaign['org_name']}"[:200]


def audience_line(counts: dict[str, int], total: int) -> str:
    """'audience built: 9,750 to send of 10,000 contacts; skipped 250 (opt_out 100, invalid_number 150)'."""
    skipped = {k: v for k, v in counts.items() if k not in ("pending", "total") and v}
    to_send = counts.get("pending", total - sum(skipped.values()))
    line = f"audience built: {_n(to_send)} to send of {_n(total)} contacts"
    if skipped:
        detail = ", ".join(f"{k} {_n(v)}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]))
        line += f"; skipped {_n(sum(skipped.values()))} ({detail})"
    return line


def pause_explanation(campaign: dict[str, Any]) -> str:
    """Why the campaign is paused and what to do about it, in one line."""
    reason = campaign.get("paused_reason") or "operator"
    detail = campaign.get("last_error_message")
    resume_at = campaign.get("resume_at")
    text = f"paused ({reason})"
    if detail and reason != "operator":  # an operator's pause may leave an older error's message behind
        text += f": {detail}"
    if resume_at and reason == "rate_limit":
        text += f"; resumes at {iso_z(resume_at)}"
    return f"{text}. {ADVICE.get(reason, ADVICE['provider_error'])}"


def funnel_line(body: dict[str, Any]) -> str:
    """'9,750 sent, 9,700 delivered (99.5%), 5,000 read (51.5%), 120 replied (1.2%), 3 failed; 250 skipped,
    47 awaiting their status (the summary follows them)'."""
    parts = [
        f"{_n(body['messages_sent'])} sent",
        f"{_n(body['messages_delivered'])} delivered ({body['delivery_rate']}%)",
        f"{_n(body['messages_read'])} read ({body['read_rate']}%)",
        f"{_n(body['messages_replied'])} replied ({body['reply_rate']}%)",
        f"{_n(body['messages_failed'])} failed",
    ]
    tail = [f"{_n(body['messages_skipped'])} skipped"]
    if body.get("awaiting_status"):  # sent, no status yet: the state's message is written before they arrive
        tail.append(f"{_n(body['awaiting_status'])} awaiting their status (the summary follows them)")
    if body["messages_pending"]:
        tail.append(f"{_n(body['messages_pending'])} not sent yet")
    if body["messages_cancelled"]:
        tail.append(f"{_n(body['messages_cancelled'])} cancelled")
    return ", ".join(parts) + "; " + ", ".join(tail)


def report(conn: sa.Connection, campaign_id: uuid.UUID) -> dict[str, Any]:
    """Everything the summary needs, read now: heading, statistics (with replied), failure examples."""
    campaign = lifecycle.get_any_org(conn, campaign_id)
    body = stats.stats(conn, campaign)
    body["messages_replied"] = conn.execute(
        sa.text("select count(*) from campaign_recipients where campaign_id = :c and replied_at is not null"),
        {"c": campaign_id},
    ).scalar_one()
    failures = [
        dict(r)
        for r in conn.execute(
            sa.text("""
        select coalesce(error_code::text, 'none') as code, count(*) as recipients, min(error_message) as example
        from campaign_recipients where campaign_id = :c and status = 'failed' group by 1 order by 2 desc limit 50
    """),
            {"c": campaign_id},
        ).mappings()
    ]
    return {"campaign": campaign, "stats": body, "failures": failures}


def status_line(campaign: dict[str, Any]) -> str:
    if campaign["status"] == "paused":
        return pause_explanation(campaign)
    if campaign["status"] == "failed" and campaign.get("last_error_message"):
        return f"failed: {campaign['last_error_message']}"
    return campaign["status"]


def summary_markdown(rep: dict[str, Any]) -> str:
    """The run's summary artifact: status (with the pause reason and what to do), the funnel, skips by
    reason and failures by code."""
    c, s = rep["campaign"], rep["stats"]
    sent = s["messages_sent"] or 0
    lines = [
        f"# {c['name']} · {c['org_name']}",
        "",
        f"**Status:** {status_line(c)}",
        "",
        f"Campaign `{c['id']}`, {_n(s['total_recipients'])} recipients.",
        "",
        "| funnel | recipients | rate |",
        "|---|---:|---:|",
        f"| sent | {_n(sent)} | |",
        f"| delivered | {_n(s['messages_delivered'])} | {s['delivery_rate']}% of sent |",
        f"| read | {_n(s['messages_read'])} | {s['read_rate']}% of delivered |",
        f"| replied | {_n(s['messages_replied'])} | {s['reply_rate']}% of sent |",
        f"| failed | {_n(s['messages_failed'])} | |",
        f"| not sent yet | {_n(s['messages_pending'])} | |",
        f"| skipped | {_n(s['messages_skipped'])} | |",
        f"| cancelled | {_n(s['messages_cancelled'])} | |",
        "",
        f"Awaiting a status from the provider: {_n(s['awaiting_status'])}.",
    ]
    if s["skipped_by_reason"]:
        lines += ["", "## Skipped, by reason", "", "| reason | recipients |", "|---|---:|"]
        lines += [f"| {k} | {_n(v)} |" for k, v in sorted(s["skipped_by_reason"].items(), key=lambda kv: -kv[1])]
    if rep["failures"]:
        lines += ["", "## Failed, by error code", "", "| code | recipients | example |", "|---|---:|---|"]
        lines += [f"| {f['code']} | {_n(f['recipients'])} | {_cell(f['example'])} |" for f in rep["failures"]]
    return "\n".join(lines) + "\n"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:200]
