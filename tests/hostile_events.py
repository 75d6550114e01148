"""A campaign's recipients and stored webhook events, for the tests of hostile input to ingestion."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from campaigns.control import lifecycle
from campaigns.control.models import CampaignCreate
from campaigns.store.schema import whatsapp_numbers
from campaigns.webhooks.receiver import signer_id
from tests.helpers import APP_SECRET

SIGNER = signer_id(APP_SECRET)
AT = 1_800_000_000


@dataclass
class Fleet:
    """A running campaign on a Meta number whose webhooks are signed with APP_SECRET, rows added on demand."""

    db: sa.Engine
    org: uuid.UUID
    pnid: str
    campaign_id: uuid.UUID

    def recipient(self, status: str = "sent", wamid: bool = True) -> dict[str, Any]:
        phone = "+55119" + str(10**7 + uuid.uuid4().int % (9 * 10**7))  # not `random`: hypothesis owns it here
        with self.db.begin() as conn:
            rid = conn.execute(
                sa.text("""
                insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, attempts,
                                                 sent_at)
                values (:c, :o, gen_random_uuid(), :p, :s, 1, case when :s = 'sent' then now() end) returning id
            """),
                {"c": self.campaign_id, "o": self.org, "p": phone, "s": status},
            ).scalar_one()
            w = f"wamid.H{uuid.uuid4().hex}" if wamid else None
            conn.execute(sa.text("update campaign_recipients set wamid = :w where id = :i"), {"w": w, "i": rid})
        return {"id": rid, "wamid": w, "phone": phone}

    def row(self, rid: int) -> Any:
        with self.db.connect() as conn:
            return conn.execute(sa.text("select * from campaign_recipients where id = :i"), {"i": rid}).one()

    def contact(self, phone: str) -> Any:
        with self.db.connect() as conn:
            return conn.execute(
                sa.text("select * from contacts where organization_id = :o and phone = :p"), {"o": self.org, "p": phone}
            ).one_or_none()


@pytest.fixture(name="fleet")
def fleet_fixture(db: sa.Engine, org: uuid.UUID) -> Fleet:
    pnid = str(uuid.uuid4().int)[:15]
    with db.begin() as conn:
        number = conn.execute(
            sa.insert(whatsapp_numbers)
            .values(
                organization_id=org,
                provider="meta_cloud",
                phone_number_id=pnid,
                block_name="none",
                mps=80,
                webhook_signer=SIGNER,
            )
            .returning(whatsapp_numbers.c.id)
        ).scalar_one()
        cid = lifecycle.create(
            conn,
            org,
            CampaignCreate(
                name="hostile",
                whatsapp_number_id=number,
                message_type="template",
                message_content={"template_name": "t"},
            ),
        )
        conn.execute(sa.text("update campaigns set status = 'running' where id = :c"), {"c": cid})
    return Fleet(db, org, pnid, cid)


def status(row: dict[str, Any], kind: str = "delivered", at: int = AT, **extra: Any) -> dict[str, Any]:
    return {
        "id": row["wamid"],
        "status": kind,
        "timestamp": str(at),
        "recipient_id": row["phone"].lstrip("+"),
        "biz_opaque_callback_data": f"pytake:{row['id']}",
        **extra,
    }


def body(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def queue(db: sa.Engine, *payloads: Any, provider: str = "meta_cloud") -> list[int]:
    """Store events as the receiver does (raw body, the signer that vouched for it), in this order."""
    with db.begin() as conn:
        return [
            conn.execute(
                sa.text("insert into webhook_events (provider, body, signers) values (:p, :b, :s) returning id"),
                {"p": provider, "b": body(p), "s": [SIGNER]},
            ).scalar_one()
            for p in payloads
        ]


def events(db: sa.Engine, ids: list[int]) -> list[Any]:
    with db.connect() as conn:
        return conn.execute(
            sa.text("select id, state, error, attempts from webhook_events where id = any(:i) order by id"), {"i": ids}
        ).all()


def assert_good_applied(fleet: Fleet, row: dict[str, Any], event_id: int) -> None:
    (event,) = events(fleet.db, [event_id])
    assert event.state == "processed", event
    assert fleet.row(row["id"]).status == "delivered"
