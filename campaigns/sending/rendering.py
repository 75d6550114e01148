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


SECTIONS = ("header", "body")
BUTTON_TEXT = {"quick_reply": "payload", "url": "text"}  # where each button sub_type takes its value


def template_variables_problem(variables: Any) -> str | None:
    """Why `variables` cannot fill a template, naming the path (the first problem); None when it can.

    Checked when a campaign is created or edited, and again before a batch renders a stored campaign
    (written before this check, or by the main app), so render_template never meets a shape it cannot use.
    """
    path = "template_variables"
    if not isinstance(variables, dict):
        return f"{path}: must be an object with header, body or buttons"
    for key, spec in variables.items():
        where = f"{path}.{key}"
        if key in SECTIONS:
            problem = _parameters_problem(spec, where)
        elif key == "buttons":
            problem = _buttons_problem(spec, where)
        else:
            problem = f"{where}: unknown (use header, body or buttons)"
        if problem:
            return problem
    return None


def _value_problem(value: Any, where: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return f"{where}: must be a text or a number"
    if isinstance(value, str) and value.count("{{") != len(PLACEHOLDER.findall(value)):
        return f"{where}: malformed placeholder (use {{{{contact.name}}}})"
    return None


def _parameters_problem(spec: Any, where: str) -> str | None:
    """Positional parameters are a list of values; named ones an object of name → value."""
    if spec is None:
        return None
    if isinstance(spec, list):
        items = [(f"{where}[{i}]", value) for i, value in enumerate(spec)]
    elif isinstance(spec, dict):
        if "" in spec:
            return f"{where}: a named parameter needs a name"
        items = [(f"{where}.{name}", value) for name, value in spec.items()]
    else:
        return f"{where}: must be a list of values or an object of named values"
    return next((problem for at, value in items if (problem := _value_problem(value, at))), None)


def _buttons_problem(buttons: Any, where: str) -> str | None:
    if buttons is None:
        return None
    if not isinstance(buttons, list):
        return f"{where}: must be a list of buttons"
    for i, button in enumerate(buttons):
        problem = _button_problem(button, f"{where}[{i}]")
        if problem:
            return problem
    return None


def _button_problem(button: Any, at: str) -> str | None:
    if not isinstance(button, dict):
        return f"{at}: must be an object with index, sub_type and payload or text"
    unknown = sorted(set(button) - {"index", "sub_type", "payload", "text"})
    if unknown:
        return f"{at}.{unknown[0]}: unknown (use index, sub_type, payload or text)"
    sub_type = button.get("sub_type", "quick_reply")
    if not isinstance(sub_type, str) or sub_type not in BUTTON_TEXT:  # a list or an object is no key: not a 500
        return f"{at}.sub_type: must be quick_reply or url"
    index = button.get("index", 0)
    if isinstance(index, bool) or str(index) not in {str(i) for i in range(10)}:
        return f"{at}.index: must be a whole number from 0 to 9"
    key = BUTTON_TEXT[sub_type]
    if key not in button and "payload" not in button:
        return f"{at}.{key}: required for a {sub_type} button"
    return next((p for k in ("payload", "text") if k in button and (p := _value_problem(button[k], f"{at}.{k}"))), None)


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
            {
                "type": "button",
                "sub_type": sub_type,
                "index": str(button.get("index", 0)),
                "parameters": [{"type": key, key: value}],
            }
        )
    template: dict[str, Any] = {
        "name": content["template_name"],
        "language": {"code": content.get("language", "pt_BR")},
    }
    if components:
        template["components"] = components
    return template
