"""Meta's Graph API error codes and the error envelope the sandbox answers with.

Every refusal the sandbox gives starts as a :class:`GraphError`: Meta's wire writes it as its JSON error
envelope (or as the ``errors[]`` of a ``failed`` status webhook), Evolution's wire maps it onto the HTTP
status Evolution would give (:func:`sandbox.wire.evolution_refusal`).
"""

from __future__ import annotations

import secrets
from typing import Any

#: code -> (title, default details). Titles follow Meta's Cloud API error-code table so that engine code
#: which logs or classifies errors sees the same strings it would see in production.
ERROR_CATALOG: dict[int, tuple[str, str]] = {
    0: ("AuthException", "Unable to authenticate the app user."),
    2: ("Service temporarily unavailable", "Service temporarily unavailable due to downtime or overload."),
    4: ("Application request limit reached", "The app has reached its API call rate limit."),
    100: ("Invalid parameter", "The request included one or more unsupported or misspelled parameters."),
    190: ("Access token has expired", "Error validating access token: Session has expired."),
    368: ("Temporarily blocked for policies violations", "The phone number is temporarily restricted."),
    80007: ("Rate limit issues", "The WhatsApp Business Account has reached its rate limit."),
    130429: ("Rate limit hit", "Cloud API message throughput has been reached."),
    131000: ("Something went wrong", "Message failed to send due to an unknown error."),
    131005: ("Access denied", "Permission is either not granted or has been removed."),
    131008: ("Required parameter is missing", "The request is missing a required parameter."),
    131009: ("Parameter value is not valid", "One or more parameter values are invalid."),
    131016: ("Service unavailable", "A service is temporarily unavailable."),
    131021: ("Recipient cannot be sender", "Sender and recipient phone number is the same."),
    131026: (
        "Message undeliverable",
        "Unable to deliver message. The recipient may not be a WhatsApp user or has not accepted the "
        "latest terms of service.",
    ),
    131031: ("Account has been locked", "The business account was restricted or disabled."),
    131042: ("Business eligibility payment issue", "There was an error related to your payment method."),
    131047: (
        "Re-engagement message",
        "More than 24 hours have passed since the recipient last replied to the sender number.",
    ),
    131048: ("Spam rate limit hit", "Message failed to send because of restrictions on the phone number."),
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "Meta chose not to deliver this message.",
    ),
    131050: (
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages "
        "on WhatsApp from your business.",
        "The recipient opted out of marketing messages.",
    ),
    131051: ("Unsupported message type", "Unsupported message type."),
    131052: ("Media download error", "Unable to download the media sent by the user."),
    131053: ("Media upload error", "Unable to upload the media used in the message."),
    131056: (
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone number in a "
        "short period of time.",
    ),
    131057: ("Account in maintenance mode", "Business account is in maintenance mode."),
    132000: ("Template Param Count Mismatch", "The number of parameters does not match the template."),
    132001: ("Template does not exist", "The template does not exist in the specified language."),
    132005: ("Template Hydrated Text Too Long", "Translated text is too long."),
    132007: ("Template Format Character Policy Violated", "Template content violates a policy."),
    132012: ("Template Parameter Format Mismatch", "Variable parameter values formatted incorrectly."),
    132015: ("Template is Paused", "Template is paused due to low quality."),
    132016: ("Template is Disabled", "Template has been paused too many times and is now disabled."),
    133004: ("Server Temporarily Unavailable", "Server is temporarily unavailable."),
    133010: ("Phone number Not Registered", "The phone number is not registered on the WhatsApp Business Platform."),
}

_AUTH_CODES = frozenset({0, 190})
_HTTP_503_CODES = frozenset({131016, 133004})
_HTTP_500_CODES = frozenset({2, 131000})


def default_http_status(code: int) -> int:
    """HTTP status Meta answers with for a Graph error ``code`` (401 auth, 5xx server-side, else 400)."""
    if code in _AUTH_CODES:
        return 401
    if code in _HTTP_503_CODES:
        return 503
    if code in _HTTP_500_CODES:
        return 500
    return 400


class GraphError(Exception):
    """A Graph API error on its way to becoming Meta's JSON error envelope."""

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        details: str | None = None,
        http_status: int | None = None,
        subcode: int | None = None,
    ) -> None:
        title, default_details = ERROR_CATALOG.get(code, ("Unknown error", "Unknown error."))
        self.code = code
        self.title = title
        self.message = message if message is not None else f"(#{code}) {title}"
        self.details = details if details is not None else default_details
        self.http_status = http_status if http_status is not None else default_http_status(code)
        self.subcode = subcode
        super().__init__(self.message)

    def envelope(self) -> dict[str, Any]:
        """Meta's Graph error body: ``{"error": {message, type, code, error_data, fbtrace_id}}``."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": "OAuthException",
            "code": self.code,
            "error_data": {"messaging_product": "whatsapp", "details": self.details},
            "fbtrace_id": "A" + secrets.token_urlsafe(16),
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        return {"error": error}

    def webhook_error(self) -> dict[str, Any]:
        """The ``errors[]`` element of a ``failed`` status webhook."""
        return {
            "code": self.code,
            "title": self.title,
            "message": self.title,
            "error_data": {"details": self.details},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }
