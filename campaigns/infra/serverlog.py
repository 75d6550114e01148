"""How the HTTP servers (`campaigns api serve`, `campaigns webhooks serve`) log: an access line per request,
and their own lines, as text or as one JSON object a line (`LOG_FORMAT=json`) for a log pipeline to parse.

An access line holds the client, method, path with its query and status; never a header, so a bearer token
or a signature cannot reach the log. The one secret a query carries, Meta's `hub.verify_token` on the
webhook's subscription check, is blanked (`RedactSecrets`)."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
SECRET_PARAMS = re.compile(r"((?:hub\.verify_token|hub%2[Ee]verify_token|token|apikey)=)[^&\s]*")


class RedactSecrets(logging.Filter):
    """Blank a secret's value in an access line's query (`hub.verify_token=***`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            args = list(record.args)
            args[2] = SECRET_PARAMS.sub(r"\1***", str(args[2]))
            record.args = tuple(args)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message; an access line's fields by name."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            line.update(zip(ACCESS_FIELDS, record.args, strict=True))
            line["message"] = f"{line['method']} {line['path']} {line['status']}"
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def uvicorn_config(fmt: str = "text", access: bool = True) -> dict[str, Any]:
    """A logging config for uvicorn.run(log_config=...): access lines (unless `access` is off) and errors."""
    formatter = (
        {"()": f"{__name__}.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "line",
        "stream": "ext://sys.stderr",
        "filters": ["secrets"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": formatter},
        "filters": {"secrets": {"()": f"{__name__}.RedactSecrets"}},
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["stderr"], "level": "INFO" if access else "WARNING", "propagate": False},
            "campaigns": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }
