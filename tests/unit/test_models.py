from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from campaigns.control.models import CampaignCreate, describe_validation_error

SEED_BODY = {
    "name": "Black Friday 2024", "description": "Promo especial", "campaign_type": "broadcast",
    "whatsapp_number_id": str(uuid.uuid4()), "message_type": "text",
    "message_content": {"text": "Olá {{contact.name}}, aproveite nossa promoção!"}, "audience_type": "all_contacts",
    "messages_per_hour": 100, "delay_between_messages_seconds": 2, "retry_max_attempts": 3, "retry_base_delay": 60,
}


def test_the_seed_body_is_accepted_with_the_seed_defaults():
    body = CampaignCreate.model_validate(SEED_BODY)
    assert (body.retry_max_delay, body.respect_opt_out, body.skip_active_conversations) == (3600, True, False)
    minimal = CampaignCreate.model_validate({k: SEED_BODY[k] for k in ("name", "whatsapp_number_id",
                                                                       "message_content")})
    assert (minimal.messages_per_hour, minimal.delay_between_messages_seconds) == (100, 2)
    assert (minimal.retry_max_attempts, minimal.retry_base_delay) == (3, 60)


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("retry_max_attempts", 11, "retry_max_attempts"),
    ("retry_base_delay", 5, "retry_base_delay"),
    ("retry_max_delay", 7201, "retry_max_delay"),
    ("delay_between_messages_seconds", 61, "delay_between_messages_seconds"),
    ("messages_per_hour", 0, "messages_per_hour"),
    ("message_content", {"text": ""}, "message_content.text"),
    ("audience_type", "everyone", "audience_type"),
    ("colour", "blue", "colour"),
])
def test_a_wrong_field_is_named(field, value, fragment):
    with pytest.raises(ValidationError) as exc:
        CampaignCreate.model_validate({**SEED_BODY, field: value})
    assert fragment in describe_validation_error(exc.value)


def test_fast_senders_may_lift_the_campaign_cap():
    body = CampaignCreate.model_validate({**SEED_BODY, "messages_per_hour": None,
                                          "delay_between_messages_seconds": 0.25})
    assert body.messages_per_hour is None and body.delay_between_messages_seconds == 0.25
