"""Evolution API (Baileys gateway): POST {base_url}/message/sendText/{instance}, header apikey."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from campaigns.sending.providers.base import Credentials, OutboundMessage, SendResult, post_json, redact


def _message(payload: Any) -> str:
    if isinstance(payload, dict):
        resp = payload.get("response")
        if isinstance(resp, dict) and resp.get("message"):
            return json.dumps(resp["message"], ensure_ascii=False)[:300]
        return str(payload.get("error") or payload.get("message") or payload)[:300]
    return str(payload)[:300]


class EvolutionProvider:
    name = "evolution"

    def __init__(self, credentials: Credentials) -> None:
        c = credentials
        self.url = f"{c.api_base.rstrip('/')}/message/sendText/{c.phone_number_id}"
        self.headers = {"apikey": c.token, "Content-Type": "application/json"}

    def supports(self, kind: str) -> bool:
        return kind == "text"

    async def send(self, session: aiohttp.ClientSession, msg: OutboundMessage) -> SendResult:
        body = {"number": msg.to.removeprefix("+"), "text": msg.text}
        reply = await post_json(session, self.url, body, self.headers, msg.recipient_id)
        if isinstance(reply, SendResult):
            return reply
        status, payload = reply.status, reply.payload
        if status in (200, 201) and isinstance(payload, dict):
            key = payload.get("key")  # its id is checked by clean_result: a peer may send anything
            message_id = key.get("id") if isinstance(key, dict) else None
            return SendResult(msg.recipient_id, True, message_id=message_id, http_status=status)
        # Evolution has no Graph codes: a 400 means the number is not on WhatsApp (permanent, like 131026);
        # 401/403 is a bad api key (campaign-level, like 190); anything else is transient, a 5xx the gateway down.
        code = {400: 131026, 401: 190, 403: 190, 404: 131026}.get(status)
        message = redact(f"HTTP {status}: {_message(payload)}", self.headers["apikey"])
        return SendResult(
            msg.recipient_id, False, None, code, message, status, status >= 500, unavailable=status >= 500
        )
