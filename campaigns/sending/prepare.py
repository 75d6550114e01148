"""Claimed rows → messages to send: each one rendered for its contact, or settled at once.

Why apart from the claim and the send: this is where a batch decides, before any request, that a row is
not sent at all (its contact deleted, opted out since the audience was built, a message that cannot
render); those outcomes are recorded with the rest of the batch.
"""

from __future__ import annotations

import logging

from campaigns.sending.claim import Claimed
from campaigns.sending.outcomes import Outcome, attempt_entry
from campaigns.sending.providers import OutboundMessage
from campaigns.sending.rendering import (
    RenderError,
    contact_values,
    render_template,
    render_text,
    template_variables_problem,
)
from campaigns.sending.spec import CampaignSpec

log = logging.getLogger(__name__)


def prepare(spec: CampaignSpec, rows: list[Claimed]) -> tuple[list[OutboundMessage], list[Outcome]]:
    """Render each message; opt-outs since the audience was built and render errors settle at once.

    Any render failure fails only its recipient, with its reason: the rows are already claimed, so an
    exception out of here would leave the whole batch in `sending`. Template variables are checked again
    here because a stored campaign may predate the check at creation (or come from the main app).
    """
    messages: list[OutboundMessage] = []
    settled: list[Outcome] = []
    problem = template_variables_problem(spec.template_variables) if spec.message_type == "template" else None
    for row in rows:
        if row.contact_deleted:  # deleted from the main app after the audience froze: never sent
            settled.append(Outcome(row.id, "skipped", skip_reason="contact_deleted", attempts_delta=-1))
            continue
        if spec.respect_opt_out and row.opted_out:
            settled.append(Outcome(row.id, "skipped", skip_reason="opt_out", attempts_delta=-1))
            continue
        try:
            if problem:
                raise RenderError(f"cannot render the message: {problem}")
            messages.append(_render(spec, row))
            continue
        except RenderError as exc:  # a missing variable: the reason names it
            reason = str(exc)
        except Exception as exc:  # the contact's attributes are not an object, say: logged, this row only
            reason = f"cannot render the message: {type(exc).__name__}"
            log.warning("recipient %s: %s", row.id, reason, exc_info=True)
        settled.append(
            Outcome(row.id, "failed", message=reason, entry=attempt_entry(row.attempts, False, None, reason))
        )
    return messages, settled


def _render(spec: CampaignSpec, row: Claimed) -> OutboundMessage:
    values = contact_values({"name": row.name, "phone": row.phone, "attributes": row.attributes})
    if spec.message_type == "text":
        return OutboundMessage(row.id, row.phone, "text", text=render_text(spec.message_content["text"], values))
    template = render_template(spec.message_content, spec.template_variables, values)
    return OutboundMessage(row.id, row.phone, "template", template=template)
