"""Ask the provider whether a number's credentials work, before a campaign starts.

The seed's checklist wants "WhatsApp number active with a valid token": a token that is merely present
would start the campaign and pause it at its first batch with `auth_error`. One GET settles it: Graph's
`GET /{phone_number_id}` (which also reports the number's quality rating) or Evolution's
`GET /instance/connectionState/{instance}`. A refused token fails the check; a provider that cannot be
reached or answers anything else (a rate limit, an outage) is only a warning: sending will tell, and a
scheduled campaign should not be held by a blip. The provider's words pass through `redact`: Graph may
quote the token it refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from campaigns.sending.providers import Credentials
from campaigns.sending.providers.base import redact
from campaigns.sending.providers.meta_cloud import graph_error

CHECK_TIMEOUT_SECONDS = 5.0
# Graph codes that are a verdict on the credentials or the number: the token (190), a permission (10,
# 200), or a phone number id that does not exist for it (100). Anything else only says "not checked".
REFUSING_CODES = frozenset({190, 10, 100, 200})


@dataclass(frozen=True)
class NumberHealth:
    accepted: bool  # the provider accepted the credentials (and, for Evolution, the instance is connected)
    reachable: bool  # the provider answered
    detail: str = ""  # why not, in the provider's words
    quality_rating: str | None = None  # Meta's GREEN | YELLOW | RED | UNKNOWN


def check_number(provider: str, creds: Credentials, timeout: float = CHECK_TIMEOUT_SECONDS) -> NumberHealth:
    base = creds.api_base.rstrip("/")
    if provider == "evolution":
        url, params = f"{base}/instance/connectionState/{creds.phone_number_id}", None
        headers = {"apikey": creds.token}
    else:
        url = f"{base}/{creds.graph_version}/{creds.phone_number_id}"
        params = {"fields": "verified_name,display_phone_number,quality_rating"}
        headers = {"Authorization": f"Bearer {creds.token}"}
    try:
        resp = httpx.get(url, params=params, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:  # the message never carries the token: it is in a header, not the URL
        return NumberHealth(False, False, f"could not reach the provider at {base}: {type(exc).__name__}")
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text[:300]
    code, message = graph_error(body) if resp.status_code != 200 else (None, "")
    message = redact(message, creds.token)
    unknown_instance = provider == "evolution" and resp.status_code == 404
    if resp.status_code in (401, 403) or code in REFUSING_CODES or unknown_instance:
        return NumberHealth(
            False,
            True,
            f"the provider refused the credentials ({code or resp.status_code}): "
            f"{message or 'HTTP ' + str(resp.status_code)}",
        )
    if resp.status_code != 200:  # a rate limit, a redirect, an outage: not a verdict on the token
        return NumberHealth(
            False, False, f"the provider answered HTTP {resp.status_code}{f' ({code}): {message}' if code else ''}"
        )
    if provider == "evolution":
        state = ((body or {}).get("instance") or {}).get("state") if isinstance(body, dict) else None
        if state != "open":
            return NumberHealth(
                False,
                True,
                f"instance {creds.phone_number_id} is {state or 'unknown'}, not connected "
                "(scan its QR code in Evolution)",
            )
        return NumberHealth(True, True)
    quality = body.get("quality_rating") if isinstance(body, dict) else None
    return NumberHealth(True, True, quality_rating=quality)
