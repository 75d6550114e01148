"""The send requests the sandbox understands and the answers it gives, in Meta's wire and in Evolution's.

Meta: ``POST /{version}/{phone_number_id}/messages`` with a Cloud API body (text, template or any other
type), answered with ``messages[0].id`` or Meta's error envelope. Evolution: ``POST
/message/sendText/{instance}`` with ``number`` and ``text``, answered 201 with the stored message or with
the HTTP status Evolution would give (it has no error codes: :func:`evolution_refusal`). Both go through
the same decision (:mod:`sandbox.state`); only this module tells them apart (:class:`Wire`).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from sandbox.errors import GraphError

_PHONE_STRIP = re.compile(r"[\s+\-().]")
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class Outgoing:
    """The parts of a send request the sandbox needs (parsed once, synchronously)."""

    __slots__ = ("to", "wa_id", "type", "body", "template", "rendered", "biz")

    def __init__(
        self,
        to: str,
        wa_id: str,
        type_: str,
        body: str | None,
        template: dict[str, Any] | None,
        rendered: str,
        biz: str | None,
    ) -> None:
        self.to = to
        self.wa_id = wa_id
        self.type = type_
        self.body = body
        self.template = template
        self.rendered = rendered
        self.biz = biz


def _bad_param(field: str, problem: str = "is required") -> GraphError:
    return GraphError(100, f"(#100) The parameter {field} {problem}.", details=f"Parameter {field} {problem}.")


def _param_text(param: Any) -> str:
    """Plain-text value of one template parameter (text, currency, date_time; else its JSON)."""
    if isinstance(param, dict):
        kind = param.get("type")
        if kind == "text" and "text" in param:
            return str(param["text"])
        if kind in ("currency", "date_time") and isinstance(param.get(kind), dict):
            return str(param[kind].get("fallback_value", ""))
    return json.dumps(param, sort_keys=True)


def _render_template(name: str, language: str, components: list[Any], templates: dict[str, str]) -> str:
    """Render a template the way the recipient would see it, when the sandbox knows its body text."""
    body_params: list[Any] = []
    for component in components:
        if isinstance(component, dict) and str(component.get("type", "")).lower() == "body":
            body_params.extend(component.get("parameters") or [])
    texts = [_param_text(p) for p in body_params]
    if not templates:
        return f"{name}[{language}](" + ", ".join(texts) + ")"
    if name not in templates:
        raise GraphError(132001, details=f"template name ({name}) does not exist in {language}")
    text = templates[name]
    placeholders = list(dict.fromkeys(_PLACEHOLDER.findall(text)))
    if len(placeholders) != len(texts):
        raise GraphError(
            132000,
            details=f"body: number of localizable_params ({len(texts)}) does not match the expected "
            f"number of params ({len(placeholders)})",
        )
    values: dict[str, str] = {}
    for position, (param, value) in enumerate(zip(body_params, texts, strict=True), start=1):
        key = param.get("parameter_name") if isinstance(param, dict) else None
        values[str(key) if key else str(position)] = value
    missing = [p for p in placeholders if p not in values]
    if missing:
        raise GraphError(132000, details=f"body: missing parameters {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def parse_message(raw: bytes, templates: dict[str, str]) -> Outgoing:
    """Validate a send body like Meta does (code 100 naming the field) and extract what we record."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphError(100, "(#100) Invalid parameter", details=f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise GraphError(100, "(#100) Invalid parameter", details="Request body must be a JSON object.")
    if data.get("messaging_product") != "whatsapp":
        raise _bad_param("messaging_product", "is required and must be 'whatsapp'")
    to = data.get("to")
    if isinstance(to, int) and not isinstance(to, bool):
        to = str(to)
    if not isinstance(to, str) or not to.strip():
        raise _bad_param("to")
    wa_id = _PHONE_STRIP.sub("", to)
    if not wa_id.isdigit() or not 5 <= len(wa_id) <= 20:
        raise _bad_param("to", "is not a valid phone number")
    type_ = data.get("type", "text")
    biz = data.get("biz_opaque_callback_data")
    if biz is not None and not isinstance(biz, str):
        raise _bad_param("biz_opaque_callback_data", "must be a string")
    if type_ == "text":
        text = data.get("text")
        body = text.get("body") if isinstance(text, dict) else None
        if not isinstance(body, str) or not body:
            raise _bad_param("text['body']")
        return Outgoing(to, wa_id, "text", body, None, body, biz)
    if type_ == "template":
        template = data.get("template")
        if not isinstance(template, dict):
            raise _bad_param("template")
        name = template.get("name")
        if not isinstance(name, str) or not name:
            raise _bad_param("template['name']")
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not isinstance(code, str) or not code:
            raise _bad_param("template['language']['code']")
        components = template.get("components") or []
        if not isinstance(components, list):
            raise _bad_param("template['components']", "must be an array")
        rendered = _render_template(name, code, components, templates)
        return Outgoing(to, wa_id, "template", None, template, rendered, biz)
    if not isinstance(type_, str) or not isinstance(data.get(type_), dict):
        raise _bad_param(f"{type_}" if isinstance(type_, str) else "type", "is required")
    return Outgoing(to, wa_id, type_, None, None, json.dumps(data[type_], sort_keys=True), biz)


def parse_evolution(raw: bytes) -> Outgoing:
    """Evolution's ``textMessageSchema``: ``number`` and ``text`` are required strings (code 100 if not)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphError(100, details=f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise GraphError(100, details="instance is not of a type(s) object")
    for field in ("number", "text"):
        if not isinstance(data.get(field), str) or not data[field]:
            raise GraphError(100, details=f'instance requires property "{field}"')
    number, text = data["number"], data["text"]
    wa_id = _PHONE_STRIP.sub("", number)
    if not wa_id.isdigit() or not 5 <= len(wa_id) <= 20:
        raise GraphError(100, details="instance.number is not a valid phone number")
    return Outgoing(number, wa_id, "text", text, None, text, None)


def _graph_accepted(record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {
        "messaging_product": "whatsapp",
        "contacts": [{"input": record["to"], "wa_id": record["wa_id"]}],
        "messages": [{"id": record["wamid"], "message_status": "accepted"}],
    }


def _graph_refused(err: GraphError, msg: Outgoing | None) -> tuple[int, dict[str, Any]]:
    return err.http_status, err.envelope()


@functools.cache  # asked on every accept and every event: one uuid5 per instance
def instance_id(instance: str) -> str:
    """A stable per-instance UUID, like the ``instanceId`` Evolution keeps in its database."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-evolution:{instance}"))


def jid(wa_id: str) -> str:
    return f"{wa_id}@s.whatsapp.net"


def _evolution_accepted(record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Evolution answers 201 with the stored message; ``key.id`` is what its webhooks call ``keyId``."""
    return 201, {
        "key": {"remoteJid": jid(record["wa_id"]), "fromMe": True, "id": record["wamid"]},
        "pushName": "",
        "status": "PENDING",
        "message": {"conversation": record["body"]},
        "contextInfo": None,
        "messageType": "conversation",
        "messageTimestamp": int(record["accepted_at"]),
        "instanceId": instance_id(record["instance"]),
        "source": "unknown",
    }


def evolution_refusal(err: GraphError, msg: Outgoing | None) -> tuple[int, dict[str, Any]]:
    """Evolution has no error codes, only HTTP statuses, so a Graph error maps onto the one it would give.

    Auth (190, any 401/403) → 401 Unauthorized; 130429 (``mps_cap``) → 429; a 5xx (131000, 2, 131016,
    133004 or a rule's ``http_status`` ≥ 500) → 500; a malformed request → 400 naming the field; any other
    code (131026, 131049, …) → 400 ``exists: false``, the only per-recipient refusal Evolution has.
    """
    message: str | list[Any]
    if err.http_status in (401, 403):
        status, message = 401, "Unauthorized"
    elif err.code == 130429:
        status, message = 429, [err.details]
    elif err.http_status >= 500:
        status, message = 500, [err.details]
    elif msg is None:  # refused before the body was understood
        status, message = 400, [err.details]
    else:
        status, message = 400, [{"exists": False, "jid": jid(msg.wa_id), "number": msg.to}]
    return status, {"status": status, "error": HTTPStatus(status).phrase, "response": {"message": message}}


@dataclass(frozen=True)
class Wire:
    """What differs between the APIs the sandbox speaks; admission, limits, rules and records are shared."""

    provider: str
    accepted: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]
    refused: Callable[[GraphError, Outgoing | None], tuple[int, dict[str, Any]]]


GRAPH = Wire("meta_cloud", _graph_accepted, _graph_refused)
EVOLUTION = Wire("evolution", _evolution_accepted, evolution_refusal)


class MessageIds:
    """Unique message ids in each provider's style (Meta's ``wamid.…``, Baileys' ``3EB0…``), for one run."""

    def __init__(self) -> None:
        self._run_id = secrets.token_hex(5).upper()
        self._seq = itertools.count(1)

    def new(self, provider: str, inbound: bool = False) -> str:
        seq = next(self._seq)
        if provider == "evolution":
            return f"{'3A' if inbound else '3EB0'}{self._run_id}{seq:010X}"
        return f"wamid.SBX{'IN' if inbound else ''}{self._run_id}{seq:010d}"
