"""Phone numbers as contacts are imported, to E.164 or refused (campaigns/audience/phones.py): an invalid one is
reported, never guessed."""

from __future__ import annotations

import polars as pl
import pytest

from campaigns.audience.phones import is_valid_expr, normalise


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+55 (11) 99999-0001", "+5511999990001"),  # separators dropped
        ("+55.11.99999.0001", "+5511999990001"),
        ("  +5511999990001 ", "+5511999990001"),
        ("11999990002", "+5511999990002"),  # no country code: the default one (55) is prepended
        ("1133330002", "+551133330002"),  # a landline: area code and 8 digits
        ("011999990002", "+5511999990002"),  # a national trunk 0 is dropped
        ("5511999990002", "+5511999990002"),  # already starts with 55 and long enough to carry it
        ("0044 20 7946 0958", "+442079460958"),  # 00 means +
        ("+1 415 555 0100", "+14155550100"),
        ("+44 20 7946 0958", "+442079460958"),  # a country with no fixed length: 8 to 15 digits after +
    ],
)
def test_a_phone_is_written_in_e164(raw, e164):
    assert normalise(raw) == e164


@pytest.mark.parametrize(
    "raw",
    [
        "12",
        "abc",
        "",
        "   ",
        "129399",  # +55 129399: too short for a Brazilian number (area code and 8 or 9 digits)
        "+55 11 99999-00011",  # one digit too many
        "+1 555 0100",  # a North American number has 10 digits
        "+0 11 99999 0001",  # no country code starts with 0
        "+12345",  # fewer than 8 digits
        "+1234567890123456",  # more than 15
        "+55 11 9999a-0001",
    ],
)
def test_a_phone_that_cannot_be_made_valid_is_refused(raw):
    assert normalise(raw) is None


def test_the_default_country_code_is_the_organizations():
    assert normalise("415 555 0100", default_country_code="1") == "+14155550100"
    assert normalise("415 555 0100", default_country_code="+1") == "+14155550100"
    assert normalise("020 7946 0958", default_country_code="44") == "+442079460958"


def test_validity_is_checked_on_a_whole_column_at_once():
    phones = pl.DataFrame({"p": ["+5511999990001", "+55119999900", None, "+14155550100", "5511999990001"]})
    assert phones.select(is_valid_expr(pl.col("p")))["p"].to_list() == [True, False, False, True, False]
