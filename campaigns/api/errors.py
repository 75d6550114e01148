"""How the API answers a refusal: `{"detail": message, "errors": [details]}` with the status chosen here for
each refusal's class. The domain raises NotFound, Conflict and Invalid (404, 409, 422); this face adds its own
(401, 403, 413, 429, 503). FastAPI's own validation errors are rewritten into the same shape, each line naming
its field, so a client meets one error format whichever layer refused."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse

from campaigns.control.models import error_lines, shown
from campaigns.errors import CampaignError, Conflict, Invalid, NotFound


class Unauthorized(CampaignError):
    pass


class Forbidden(CampaignError):
    pass


class TooLarge(CampaignError):
    pass


class Unavailable(CampaignError):
    pass


class TooMany(CampaignError):
    retry_after = 5  # seconds; said in Retry-After


# Each refusal's status; a class not named answers as its nearest named ancestor.
STATUS: dict[type[CampaignError], int] = {
    CampaignError: 400,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    Unauthorized: 401,
    Forbidden: 403,
    TooLarge: 413,
    TooMany: 429,
    Unavailable: 503,
}


class ErrorBody(BaseModel):
    """Every refusal's body."""

    detail: str
    errors: list[str]


def status_of(exc: CampaignError) -> int:
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


def refusal(exc: CampaignError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, TooMany):
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse({"detail": exc.message, "errors": exc.details}, status_code=status_of(exc), headers=headers)


def invalid(lines: list[str]) -> JSONResponse:
    return JSONResponse({"detail": "; ".join(lines), "errors": lines}, status_code=422)


_WHERE = ("body", "query", "path", "header")


def validation_lines(errors: Any) -> list[str]:
    """FastAPI's request errors as our lines: "field: what is wrong", the request part (body, query) left out."""
    lines, rest = [], []
    for err in errors:
        where, *loc = err["loc"] if err["loc"] and err["loc"][0] in _WHERE else ("", *err["loc"])
        if where == "query" and err["type"] in ("int_parsing", "int_from_float"):
            lines.append(shown(f"{'.'.join(map(str, loc))} must be a whole number (got {err['input']!r})"))
        elif not loc and where == "body" and err["type"] == "missing":
            lines.append("The request body is required")
        elif not loc and where == "body" and err["type"] in ("model_attributes_type", "dict_type", "model_type"):
            lines.append("The request body must be a JSON object")
        else:
            rest.append({**err, "loc": tuple(loc)})
    return lines + error_lines(rest)
