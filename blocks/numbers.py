"""Registering a number: its row in Postgres, its secrets in a Prefect block."""

from __future__ import annotations

import logging
import uuid

import sqlalchemy as sa
from prefect.exceptions import ObjectAlreadyExists
from pydantic import SecretStr

from blocks.whatsapp import WhatsAppNumberCredentials, _load_block
from campaigns.control import tenancy
from campaigns.settings import get_settings
from campaigns.store.schema import whatsapp_numbers
from campaigns.webhooks.receiver import KnownSecrets, signer_id, well_known

log = logging.getLogger(__name__)


def block_name_for(organization_id: uuid.UUID, phone_number_id: str) -> str:
    """Block names allow lowercase letters, digits and dashes."""
    safe = "".join(ch if ch.isalnum() else "-" for ch in phone_number_id.lower())
    return f"wa-{str(organization_id)[:8]}-{safe}"[:100]


def add_number(
    conn: sa.Connection,
    organization_id: uuid.UUID,
    *,
    provider: str,
    phone_number_id: str,
    token: str,
    app_secret: str,
    verify_token: str,
    api_base: str,
    mps: int = 80,
    display_phone_number: str | None = None,
    graph_version: str = "v24.0",
) -> uuid.UUID:
    """Create or update the number; the block is saved first so the row never names a missing block."""
    name = block_name_for(organization_id, phone_number_id)
    block = WhatsAppNumberCredentials(
        provider=provider,
        phone_number_id=phone_number_id,
        access_token=SecretStr(token),
        app_secret=SecretStr(app_secret),
        verify_token=SecretStr(verify_token),
        api_base=api_base,
        graph_version=graph_version,
    )
    try:
        block.save(name, overwrite=True)
    except ObjectAlreadyExists:  # the block type, registered at the same moment by another process: now it is
        block.save(name, overwrite=True)
    signing_secret = token if provider == "evolution" else app_secret
    signer = signer_id(signing_secret) if signing_secret else None  # None: signed by the platform's app
    return tenancy.add_number(
        conn,
        organization_id,
        provider=provider,
        phone_number_id=phone_number_id,
        block_name=name,
        mps=mps,
        webhook_signer=signer,
        display_phone_number=display_phone_number,
    )


def secrets_loader() -> KnownSecrets:
    """Every app secret and verify token the receiver accepts: the Meta app's and each number's own.

    A secret printed in this code base (`webhooks.WELL_KNOWN_SECRETS`: the sandbox's default, the demo's of
    old) is never trusted: anyone could sign with it. The numbers that carry one are named in a warning."""
    from campaigns.store.db import get_engine

    settings = get_settings()
    known = KnownSecrets()
    if settings.meta_app_secret:
        known.platform_secret = settings.meta_app_secret.get_secret_value().encode()
    with get_engine().connect() as conn:
        rows = conn.execute(sa.select(whatsapp_numbers.c.block_name, whatsapp_numbers.c.provider)).all()
    refused = []
    for block_name, provider in rows:
        try:
            creds = _load_block(block_name).to_credentials()
        except ValueError:
            continue  # a number whose block was deleted signs nothing we can check
        if well_known(creds.token if provider == "evolution" else creds.app_secret or ""):
            refused.append(block_name)
            continue
        if provider == "evolution":
            known.evolution_keys.setdefault(creds.phone_number_id, []).append(creds.token)
        else:
            if creds.app_secret:
                known.app_secrets.append(creds.app_secret.encode())
            if creds.verify_token:
                known.verify_tokens.append(creds.verify_token)
    if refused:
        log.warning(
            "webhooks signed for %d number(s) are refused: their secret is a well-known one (%s); "
            "give them their app's own secret",
            len(refused),
            ", ".join(refused[:5]),
        )
    known.app_secrets = list(dict.fromkeys(known.app_secrets))  # many numbers share one app: one HMAC each
    return known
