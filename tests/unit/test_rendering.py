from __future__ import annotations

import pytest

from campaigns.sending.rendering import (
    RenderError,
    contact_values,
    render_template,
    render_text,
    template_variables_problem,
)

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
        {
            "header": ["{{contact.city}}"],
            "body": {"first_name": "{{contact.first_name}}"},
            "buttons": [{"index": 0, "sub_type": "quick_reply", "payload": "STOP"}],
        },
        ANA,
    )
    assert template == {
        "name": "promo",
        "language": {"code": "pt_BR"},
        "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "Recife"}]},
            {"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}]},
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "0",
                "parameters": [{"type": "payload", "payload": "STOP"}],
            },
        ],
    }


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("{{contact.name}}", "Ana Souza"),
        ("{{ contact.name }}", "Ana Souza"),  # spaces inside the braces
        ("{{contact.phone}}", "+5511911111111"),
        ("{{contact.coupon | BF10 }}", "BF10"),  # an empty value takes the fallback, trimmed
        ("{{contact.city|}}", "Recife"),  # a value wins over any fallback
        ("{{contact.age|}}", ""),  # an empty fallback is a fallback
        ("{{contact.visits}}", "0"),  # zero is a value, not a missing one
        ("Sem variáveis", "Sem variáveis"),
        ("{contact.name}", "{contact.name}"),  # single braces are text
    ],
)
def test_placeholders_render_with_spaces_fallbacks_and_any_value(text, rendered):
    values = {**ANA, "contact.visits": 0}
    assert render_text(text, values) == rendered


def test_a_contact_without_a_name_has_no_first_name():
    values = contact_values({"name": None, "phone": "+5511911111111", "attributes": None})
    with pytest.raises(RenderError, match="missing variable contact.first_name"):
        render_text("Oi {{contact.first_name}}", values)
    assert render_text("Oi {{contact.first_name|cliente}}", values) == "Oi cliente"


def test_a_template_without_variables_has_no_components_and_a_url_button_takes_its_text():
    assert render_template({"template_name": "hello"}, {}, ANA) == {"name": "hello", "language": {"code": "pt_BR"}}
    url = render_template(
        {"template_name": "t", "language": "en_US"},
        {"buttons": [{"index": 1, "sub_type": "url", "text": "{{contact.city}}"}]},
        ANA,
    )
    assert url["language"] == {"code": "en_US"}
    assert url["components"] == [
        {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "Recife"}]}
    ]


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({}, None),
        (
            {
                "header": ["{{contact.city}}"],
                "body": {"first": "{{contact.first_name}}", "n": 3},
                "buttons": [
                    {"index": 0, "sub_type": "quick_reply", "payload": "STOP"},
                    {"index": 1, "sub_type": "url", "text": "x"},
                ],
            },
            None,
        ),
        ([], "template_variables: must be an object with header, body or buttons"),
        ({"footer": ["x"]}, "template_variables.footer: unknown (use header, body or buttons)"),
        ({"body": "Ana"}, "template_variables.body: must be a list of values or an object of named values"),
        ({"body": [None]}, "template_variables.body[0]: must be a text or a number"),
        ({"body": [True]}, "template_variables.body[0]: must be a text or a number"),
        ({"body": {"": "x"}}, "template_variables.body: a named parameter needs a name"),
        ({"body": ["{{contact.name"]}, "template_variables.body[0]: malformed placeholder (use {{contact.name}})"),
        ({"buttons": {"index": 0}}, "template_variables.buttons: must be a list of buttons"),
        (
            {"buttons": ["STOP"]},
            "template_variables.buttons[0]: must be an object with index, sub_type and payload or text",
        ),
        (
            {"buttons": [{"payload": "x", "color": "red"}]},
            "template_variables.buttons[0].color: unknown (use index, sub_type, payload or text)",
        ),
        (
            {"buttons": [{"sub_type": "call", "payload": "x"}]},
            "template_variables.buttons[0].sub_type: must be quick_reply or url",
        ),
        (
            {"buttons": [{"sub_type": [], "payload": "x"}]},  # hypothesis found it: a 500 (unhashable), not a 422
            "template_variables.buttons[0].sub_type: must be quick_reply or url",
        ),
        (
            {"buttons": [{"index": 10, "payload": "x"}]},
            "template_variables.buttons[0].index: must be a whole number from 0 to 9",
        ),
        (
            {"buttons": [{"index": 0, "sub_type": "url"}]},
            "template_variables.buttons[0].text: required for a url button",
        ),
        (
            {"buttons": [{"index": 0, "payload": {"x": 1}}]},
            "template_variables.buttons[0].payload: must be a text or a number",
        ),
    ],
)
def test_template_variables_that_cannot_fill_a_template_are_refused_naming_the_path(variables, problem):
    assert template_variables_problem(variables) == problem
