from __future__ import annotations

import pytest

from campaigns.sending.rendering import RenderError, contact_values, render_template, render_text

ANA = contact_values({"name": "Ana Souza", "phone": "+5511911111111", "attributes": {"city": "Recife", "coupon": ""}})


def test_text_uses_contact_fields_and_attributes():
    assert render_text("Olá {{contact.name}}, de {{ contact.city }}!", ANA) == "Olá Ana Souza, de Recife!"
    assert render_text("Oi {{contact.first_name}}", ANA) == "Oi Ana"


def test_a_missing_variable_names_itself_unless_it_has_a_fallback():
    with pytest.raises(RenderError, match="missing variable contact.coupon"):
        render_text("Cupom {{contact.coupon}}", ANA)
    with pytest.raises(RenderError, match="contact.age"):
        render_text("{{contact.age}}", ANA)
    assert render_text("Cupom {{contact.coupon|BF10}}", ANA) == "Cupom BF10"


def test_template_components_from_template_variables():
    template = render_template(
        {"template_name": "promo", "language": "pt_BR"},
        {"header": ["{{contact.city}}"], "body": {"first_name": "{{contact.first_name}}"},
         "buttons": [{"index": 0, "sub_type": "quick_reply", "payload": "STOP"}]},
        ANA,
    )
    assert template == {
        "name": "promo", "language": {"code": "pt_BR"},
        "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "Recife"}]},
            {"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}]},
            {"type": "button", "sub_type": "quick_reply", "index": "0",
             "parameters": [{"type": "payload", "payload": "STOP"}]},
        ],
    }
