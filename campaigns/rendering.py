"""Message rendering: `{{contact.name}}`-style placeholders for text, and template components.

A placeholder may carry a fallback: `{{contact.name|cliente}}`. A placeholder whose value is missing
for a contact (and has no fallback) fails that recipient with a reason naming the variable; it never
fails the batch.
"""

from __future__ import annotations

import re
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([a-zA-Z_][\w.]*)\s*(?:\|([^}]*))?\}\}")


class RenderError(ValueError):
    """A recipient's message cannot be rendered (the message says which variable)."""


def contact_values(contact: dict[str, Any]) -> dict[str, Any]:
    """The names a message may use: contact.name, contact.phone, contact.<attribute>."""
    values = {f"contact.{k}": v for k, v in (contact.get("attributes") or {}).items()}
    values["contact.name"] = contact.get("name")
    values["contact.phone"] = contact.get("phone")
    values["contact.first_name"] = (contact.get("name") or "").split(" ")[0] or None
    return values


def render_text(text: str, values: dict[str, Any]) -> str:
    def sub(match: re.Match[str]) -> str:
        name, fallback = match.group(1), match.group(2)
        value = values.get(name)
        if value is None or value == "":
            if fallback is not None:
                return fallback.strip()
            raise RenderError(f"missing variable {name}")
        return str(value)

    return PLACEHOLDER.sub(sub, text)


def placeholders(text: str) -> list[str]:
    return [m.group(1) for m in PLACEHOLDER.finditer(text)]


def _parameters(spec: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Positional (list) or named (dict) text parameters of one component."""
    if isinstance(spec, dict):
        return [
            {"type": "text", "parameter_name": name, "text": render_text(str(v), values)} for name, v in spec.items()
        ]
    return [{"type": "text", "text": render_text(str(v), values)} for v in spec or []]


def render_template(content: dict[str, Any], variables: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Meta's `template` object: name, language and components filled from template_variables.

    template_variables: {"header": [...], "body": [...] or {"name": "..."}, "buttons": [{"index": 0,
    "sub_type": "quick_reply"|"url", "payload"|"text": "..."}]}.
    """
    components: list[dict[str, Any]] = []
    for section in ("header", "body"):
        if variables.get(section):
            components.append({"type": section, "parameters": _parameters(variables[section], values)})
    for button in variables.get("buttons") or []:
        sub_type = button.get("sub_type", "quick_reply")
        key = "payload" if sub_type == "quick_reply" else "text"
        value = render_text(str(button.get(key, button.get("payload", ""))), values)
        components.append(
            {"type": "button", "sub_type": sub_type, "index": str(button.get("index", 0)),
             "parameters": [{"type": key, key: value}]}
        )
    template: dict[str, Any] = {
        "name": content["template_name"],
        "language": {"code": content.get("language", "pt_BR")},
    }
    if components:
        template["components"] = components
    return template
