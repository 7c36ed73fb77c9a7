"""parse_retry_hint: how long an upstream asked us to wait."""

import email.utils
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aibridge.keypool import parse_retry_hint


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, 0.0),
        ({"content-type": "application/json"}, 0.0),
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after": "5"}, 5.0),
        ({"RETRY-AFTER": "5"}, 5.0),
        ({"rEtRy-AfTeR": "12"}, 12.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "  7  "}, 7.0),
        ({"retry-after": "\t3\t"}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1500"}, 1.5),
        ({"RETRY-AFTER-MS": "0.5"}, 0.0005),
        ({"retry-after-ms": " 2000 "}, 2.0),
        ({"retry-after-ms": "1234.5"}, 1.2345),
    ],
)
def test_valid_hints(headers: dict[str, str], seconds: float) -> None:
    assert parse_retry_hint(headers) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "20", "retry-after-ms": "100"},
        {"retry-after-ms": "100", "retry-after": "20"},
        {"Retry-After": "0.5", "Retry-After-Ms": "100"},
        {
            "retry-after": email.utils.formatdate(time.time() + 600, usegmt=True),
            "retry-after-ms": "100",
        },
    ],
)
def test_retry_after_ms_wins(headers: dict[str, str]) -> None:
    assert parse_retry_hint(headers) == pytest.approx(0.1)


@pytest.mark.parametrize("bad_ms", ["", "abc", "0", "-100", "nan", "inf", "-inf", "   "])
def test_unusable_retry_after_ms_falls_back_to_retry_after(bad_ms: str) -> None:
    assert parse_retry_hint({"retry-after-ms": bad_ms, "retry-after": "3"}) == 3.0
    assert parse_retry_hint({"retry-after-ms": bad_ms}) == 0.0


@pytest.mark.parametrize(
    "value",
    ["", "   ", "abc", "5s", "0", "0.0", "-1", "-0.5", "nan", "NaN", "inf", "-inf", "1,5"],
)
def test_invalid_or_non_positive_retry_after_is_zero(value: str) -> None:
    assert parse_retry_hint({"retry-after": value}) == 0.0


def test_http_date_in_the_future() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    # HTTP-dates have whole-second resolution; allow for that and a slow machine.
    assert 118.0 <= parse_retry_hint({"Retry-After": when}) <= 120.0


def test_http_date_with_surrounding_whitespace() -> None:
    when = email.utils.formatdate(time.time() + 300, usegmt=True)
    assert 298.0 <= parse_retry_hint({"retry-after": f"  {when}  "}) <= 300.0


@pytest.mark.parametrize("offset", [-1.0, -120.0, -86400.0])
def test_http_date_in_the_past_is_zero(offset: float) -> None:
    when = email.utils.formatdate(time.time() + offset, usegmt=True)
    assert parse_retry_hint({"retry-after": when}) == 0.0


def test_http_date_fixed_in_the_past() -> None:
    assert parse_retry_hint({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "999999"},
        {"retry-after": "3600.5"},
        {"retry-after-ms": "99999999"},
        {"retry-after": email.utils.formatdate(time.time() + 7200, usegmt=True)},
    ],
)
def test_clamped_to_an_hour(headers: dict[str, str]) -> None:
    assert parse_retry_hint(headers) == 3600.0


def test_exactly_an_hour_is_kept() -> None:
    assert parse_retry_hint({"retry-after": "3600"}) == 3600.0


def test_custom_clamp() -> None:
    assert parse_retry_hint({"retry-after": "90"}, max_seconds=30.0) == 30.0
    assert parse_retry_hint({"retry-after": "10"}, max_seconds=30.0) == 10.0


@given(st.integers(min_value=1, max_value=3600))
def test_integer_seconds_round_trip(seconds: int) -> None:
    assert parse_retry_hint({"Retry-After": str(seconds)}) == float(seconds)


@given(st.floats(min_value=0.001, max_value=3_600_000.0, allow_nan=False))
def test_milliseconds_round_trip(ms: float) -> None:
    assert parse_retry_hint({"retry-after-ms": repr(ms)}) == pytest.approx(ms / 1000.0)


@given(st.text(max_size=30))
def test_never_raises_and_stays_in_range(value: str) -> None:
    for name in ("retry-after", "retry-after-ms"):
        seconds = parse_retry_hint({name: value})
        assert 0.0 <= seconds <= 3600.0
