"""Meta's WhatsApp Cloud API: POST {api_base}/{version}/{phone_number_id}/messages."""

from __future__ import annotations

from typing import Any

import aiohttp

from campaigns.sending.error_codes import AMBIGUOUS_CODES, UNAVAILABLE_CODES
from campaigns.sending.providers.base import Credentials, OutboundMessage, SendResult, graph_code, post_json, redact


def graph_error(body: Any) -> tuple[int | None, str]:
    """Code and a readable message from a Graph error envelope (details included when present)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, str(body)[:300]
    message = str(err.get("message") or "")
    details = (err.get("error_data") or {}).get("details") if isinstance(err.get("error_data"), dict) else None
    if details and str(details) not in message:
        message = f"{message}: {details}"
    return graph_code(err.get("code")), message


def _first_id(payload: dict[str, Any]) -> Any:
    """`messages[0].id` of an accepted send, or None when the answer has another shape (clean_result checks it)."""
    messages = payload.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    return first.get("id") if isinstance(first, dict) else None


class MetaCloudProvider:
    name = "meta_cloud"

    def __init__(self, credentials: Credentials) -> None:
        c = credentials
        self.url = f"{c.api_base.rstrip('/')}/{c.graph_version}/{c.phone_number_id}/messages"
        self.headers = {"Authorization": f"Bearer {c.token}", "Content-Type": "application/json"}
        self.token = c.token

    def supports(self, kind: str) -> bool:
        return kind in ("text", "template")

    def body(self, msg: OutboundMessage) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": msg.to.removeprefix("+"),
            "type": msg.kind,
            "biz_opaque_callback_data": msg.callback_data,
        }
        if msg.kind == "text":
            body["text"] = {"preview_url": False, "body": msg.text}
        else:
            body["template"] = msg.template
        return body

    async def send(self, session: aiohttp.ClientSession, msg: OutboundMessage) -> SendResult:
        reply = await post_json(session, self.url, self.body(msg), self.headers, msg.recipient_id)
        if isinstance(reply, SendResult):
            return reply
        status, payload = reply.status, reply.payload
        if status == 200 and isinstance(payload, dict) and payload.get("messages"):
            return SendResult(msg.recipient_id, True, message_id=_first_id(payload), http_status=status)
        code, message = graph_error(payload)
        ambiguous = code in AMBIGUOUS_CODES or (code is None and status >= 500)
        return SendResult(
            msg.recipient_id,
            False,
            None,
            code,
            redact(message, self.token) or f"HTTP {status}",
            status,
            ambiguous,
            reply.retry_after,
            unavailable=code in UNAVAILABLE_CODES or (code is None and status >= 500),
        )


class SandboxProvider(MetaCloudProvider):
    """The built-in sandbox speaks Meta's wire format; only its address differs."""

    name = "sandbox"
