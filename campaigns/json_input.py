"""Untrusted JSON (API bodies, the CLI's campaign files), parsed and checked before anything reaches Postgres.

Each check stands for a failure that otherwise surfaced deep in a handler as a 500 (or a CLI traceback):
Python's parser raises RecursionError on deep nesting, Postgres refuses NUL in text and JSONB and NaN or
Infinity in JSONB, and a lone surrogate (`"\\ud800"`) cannot be encoded to UTF-8 at all. Here each one is
an `Invalid` (422) naming the field.
"""

from __future__ import annotations

import json
import math
from typing import Any

from campaigns.control.models import shown
from campaigns.errors import Invalid

MAX_DEPTH = 32  # a campaign body needs about 6 (template components); nothing legitimate comes near


def parse(raw: bytes | str, what: str = "The request body") -> Any:
    """The parsed JSON, refused (Invalid) when not JSON, nested too deeply or holding what Postgres cannot store."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise _invalid(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError:  # also a body that is not UTF-8, or a number with thousands of digits
        raise _invalid(f"{what} is not valid JSON") from None
    check(value)
    return value


def check(value: Any) -> None:
    """Walk the value without recursion; the first problem is refused with its field's path."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _invalid(f"{_shown(path)}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, float) and not math.isfinite(item):
            raise _invalid(f"{_shown(path)}: not a finite number ({item})")
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else (str(key) or '""')  # a field named ""
                _check_text(str(key), child_path)
                stack.append((child, child_path, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def check_text(value: str, field: str) -> None:
    """One string from a query or a form: no NUL, valid Unicode."""
    _check_text(value, field)


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise _invalid(f"{_shown(path)}: contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"{_shown(path)}: not valid Unicode (a lone surrogate)") from None


def _invalid(message: str) -> Invalid:
    """A 422 whose `errors` list names the field, as the model's own errors do (models.field_errors)."""
    return Invalid(message, [message])


def _shown(path: str) -> str:
    """The path as a message names it: the body itself when empty, shortened when very long."""
    path = shown(path)
    if not path:
        return "body"
    return path if len(path) <= 120 else path[:117] + "..."
