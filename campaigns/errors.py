"""The refusals every folder may raise: a message and its details, in the domain's words.

They say what went wrong, not how to answer: the faces choose (campaigns/api.py maps each class to an HTTP
status, campaigns/cli/ to an exit code, the operator flows end Failed with the message).
"""

from __future__ import annotations


class CampaignError(Exception):
    """An operation refused."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class NotFound(CampaignError):
    """No such campaign, number or organization for the caller (another organization's is missing too)."""


class Conflict(CampaignError):
    """Not in the state it needs to be (start a running campaign, edit a frozen audience)."""


class Invalid(CampaignError):
    """A value the caller sent is wrong."""
