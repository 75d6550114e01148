"""Evolution API (Baileys gateway): POST {base_url}/message/sendText/{instance}, header apikey."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from campaigns.providers.base import Credentials, OutboundMessage, SendResult


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
        rid = msg.recipient_id
        data = json.dumps({"number": msg.to.removeprefix("+"), "text": msg.text}, ensure_ascii=False).encode()
        try:
            async with session.post(self.url, data=data, headers=self.headers) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            return SendResult(rid, False, error_message="timeout waiting for Evolution", ambiguous=True)
        except aiohttp.ClientConnectorError as exc:
            return SendResult(rid, False, error_message=f"connection failed: {exc.os_error}")
        except aiohttp.ClientError as exc:
            return SendResult(rid, False, error_message=f"transport error: {exc}", ambiguous=True)
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")
        if status in (200, 201) and isinstance(payload, dict):
            key = payload.get("key") or {}
            return SendResult(rid, True, message_id=key.get("id"), http_status=status)
        # Evolution has no Graph codes: a 400 means the number is not on WhatsApp (permanent, like 131026);
        # 401/403 is a bad api key (campaign-level, like 190); anything else is transient.
        code = {400: 131026, 401: 190, 403: 190, 404: 131026}.get(status)
        return SendResult(rid, False, None, code, f"HTTP {status}: {_message(payload)}", status, status >= 500)
