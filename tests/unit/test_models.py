from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from campaigns.control.models import SEED_EXAMPLE, CampaignCreate, describe_validation_error, storable_problem

SEED_BODY = {**SEED_EXAMPLE, "whatsapp_number_id": str(uuid.uuid4())}  # the seed's "1. Criar Campanha"


def test_the_seed_body_is_accepted_with_the_seed_defaults():
    body = CampaignCreate.model_validate(SEED_BODY)
    assert (body.retry_max_delay, body.respect_opt_out, body.skip_active_conversations) == (3600, True, False)
    minimal = CampaignCreate.model_validate(
        {k: SEED_BODY[k] for k in ("name", "whatsapp_number_id", "message_content")}
    )
    assert (minimal.messages_per_hour, minimal.delay_between_messages_seconds) == (100, 2)
    assert (minimal.retry_max_attempts, minimal.retry_base_delay) == (3, 60)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("retry_max_attempts", 11, "retry_max_attempts"),
        ("retry_base_delay", 5, "retry_base_delay"),
        ("retry_max_delay", 7201, "retry_max_delay"),
        ("delay_between_messages_seconds", 61, "delay_between_messages_seconds"),
        ("messages_per_hour", 0, "messages_per_hour"),
        ("message_content", {"text": ""}, "message_content.text"),
        ("audience_type", "everyone", "audience_type"),
        ("colour", "blue", "colour"),
    ],
)
def test_a_wrong_field_is_named(field, value, fragment):
    with pytest.raises(ValidationError) as exc:
        CampaignCreate.model_validate({**SEED_BODY, field: value})
    assert fragment in describe_validation_error(exc.value)


def test_fast_senders_may_lift_the_campaign_cap():
    body = CampaignCreate.model_validate(
        {**SEED_BODY, "messages_per_hour": None, "delay_between_messages_seconds": 0.25}
    )
    assert body.messages_per_hour is None and body.delay_between_messages_seconds == 0.25


TEMPLATE = {"message_type": "template", "message_content": {"template_name": "black_friday", "language": "pt_BR"}}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"message_content": {}}, "message_content.text: required for a text message"),
        ({"message_content": {"text": "   "}}, "message_content.text: required for a text message"),
        ({"message_content": {"text": "x" * 4097}}, "message_content.text: longer than 4096 characters"),
        ({"message_content": {"text": "Oi {{contact.name"}}, "message_content.text: malformed placeholder"),
        (
            {**TEMPLATE, "message_content": {"language": "pt_BR"}},
            "message_content.template_name: required for a template message",
        ),
        (
            {**TEMPLATE, "message_content": {"template_name": "t", "language": 1}},
            "message_content.language: must be a locale code such as pt_BR",
        ),
        ({**TEMPLATE, "template_variables": {"body": "Ana"}}, "template_variables.body: must be a list of values"),
        ({"audience_type": "tags"}, "audience_filter.tags: required when audience_type is 'tags'"),
        (
            {"audience_type": "contacts", "audience_filter": {"tags": ["vip"]}},
            "audience_filter.contact_ids: required when audience_type is 'contacts'",
        ),
        ({"audience_filter": {"tags": ["vip"], "match": "some"}}, "audience_filter.match"),
        ({"name": "Black\x00Friday"}, "name: contains a NUL character"),
        ({"description": "\ud800"}, "description: is not valid Unicode text (a lone surrogate)"),
        ({"message_content": {"text": "Oi", "extra": float("nan")}}, "message_content.extra: must be a finite number"),
        ({"audience_filter": {"tags": ["a\x00"]}}, "audience_filter.tags[0]: contains a NUL character"),
        ({"\ud800": 1}, "\\ud800: is not valid Unicode text"),  # a field name is quoted back escaped
    ],
)
def test_a_body_the_engine_could_not_send_or_store_is_refused_naming_the_field(fields, error):
    with pytest.raises(ValidationError) as exc:
        CampaignCreate.model_validate({**SEED_BODY, **fields})
    assert error in describe_validation_error(exc.value)


def test_a_template_campaign_with_every_part_is_accepted():
    body = CampaignCreate.model_validate(
        {
            **SEED_BODY,
            **TEMPLATE,
            "template_variables": {
                "header": ["{{contact.city}}"],
                "body": {"name": "{{contact.name|cliente}}"},
                "buttons": [{"index": 0, "sub_type": "quick_reply", "payload": "STOP"}],
            },
        }
    )
    assert body.message_type == "template" and body.template_variables["body"] == {"name": "{{contact.name|cliente}}"}


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": [1, "x", {"b": None}], "n": 1.5}, None),
        ({"a": [1, "x\x00"]}, "v.a[1]: contains a NUL character"),
        ({"a b": {"c": float("inf")}}, 'v."a b".c: must be a finite number'),  # a key that is no name is quoted
        ({"k\x00": 1}, 'v."k\\u0000": contains a NUL character'),
        (nested(32), None),
        (nested(33), "v" + "[0]" * 33 + ": nested deeper than 32 levels"),
    ],
)
def test_what_postgres_cannot_store_is_found_wherever_it_hides(value, problem):
    assert storable_problem(value, "v") == problem
