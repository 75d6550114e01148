"""Credentials of one WhatsApp number, as a Prefect block (encrypted at rest, secrets masked in the UI).

One block per number, named on the number's row (`whatsapp_numbers.block_name`). Flow parameters,
logs and artifacts only ever carry the block's name.
"""

from __future__ import annotations

import time
from typing import cast

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from campaigns.sending.providers import Credentials


class WhatsAppNumberCredentials(Block):
    _block_type_name = "WhatsApp Number Credentials"
    _block_type_slug = "whatsapp-number-credentials"
    _description = (
        "Token, app secret, verify token and API base of one WhatsApp number (Cloud API, Evolution or sandbox)."
    )

    provider: str = Field(description="meta_cloud | evolution | sandbox")
    phone_number_id: str = Field(description="Meta's phone number id, or the Evolution instance name")
    access_token: SecretStr = Field(description="Bearer token (Meta) or apikey (Evolution)")
    app_secret: SecretStr = Field(default=SecretStr(""), description="Meta app secret for webhook signatures")
    verify_token: SecretStr = Field(default=SecretStr(""), description="Webhook verification token")
    api_base: str = Field(description="e.g. https://graph.facebook.com, or the sandbox's URL")
    graph_version: str = Field(default="v24.0", description="Graph API version (v24.0 or newer)")

    def to_credentials(self) -> Credentials:
        return Credentials(
            phone_number_id=self.phone_number_id,
            token=self.access_token.get_secret_value(),
            api_base=self.api_base,
            graph_version=self.graph_version,
            app_secret=self.app_secret.get_secret_value(),
            verify_token=self.verify_token.get_secret_value(),
        )


_cache: dict[str, tuple[float, Credentials]] = {}
CACHE_SECONDS = 30.0


def _load_block(block_name: str) -> WhatsAppNumberCredentials:
    """The block, loaded synchronously (Prefect's sync-or-async `load` types as either)."""
    return cast(WhatsAppNumberCredentials, WhatsAppNumberCredentials.load(block_name))


def load_credentials(block_name: str, *, fresh: bool = False) -> Credentials:
    """Cached per process for 30 s: a fixed token reaches running workers without a restart."""
    hit = _cache.get(block_name)
    if hit and not fresh and time.monotonic() - hit[0] < CACHE_SECONDS:
        return hit[1]
    creds = _load_block(block_name).to_credentials()
    _cache[block_name] = (time.monotonic(), creds)
    return creds


def fresh_credentials(block_name: str) -> Credentials:
    """Read now, past the cache: what a start's checklist asks the provider about (campaigns.control.runs)."""
    return load_credentials(block_name, fresh=True)
