"""retrying: the backoff schedule, Retry-After parsing, and when attempts run out."""

from __future__ import annotations

import datetime
import email.utils
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fanout_core import spec
from workers import retrying

DEFAULT = spec.RetrySpec()  # base 2 s, cap 900 s, 5 attempts
NOW = datetime.datetime(2025, 3, 14, 15, 9, 26, tzinfo=datetime.UTC)
SQS_CAP = 43_200.0


def policy(base: float, cap: float, attempts: int = 5) -> spec.RetrySpec:
    return spec.RetrySpec(base_delay_seconds=base, max_delay_seconds=cap, max_attempts=attempts)


def test_default_schedule_doubles_then_caps() -> None:
    ceilings = [retrying.backoff_ceiling(n, DEFAULT) for n in range(1, 13)]
    assert ceilings == [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]


def test_equal_jitter_keeps_half_the_step() -> None:
    assert retrying.backoff_delay(3, DEFAULT, random=lambda: 0.0) == 4.0
    assert retrying.backoff_delay(3, DEFAULT, random=lambda: 0.5) == 6.0
    assert retrying.backoff_delay(3, DEFAULT, random=lambda: 1.0) == 8.0
    # A misbehaving random source cannot push the delay out of [step/2, step].
    assert retrying.backoff_delay(3, DEFAULT, random=lambda: 7.0) == 8.0
    assert retrying.backoff_delay(3, DEFAULT, random=lambda: -1.0) == 4.0


def test_odd_receive_counts() -> None:
    assert retrying.backoff_ceiling(0, DEFAULT) == 2  # treated as the first attempt
    assert retrying.backoff_ceiling(-3, DEFAULT) == 2
    assert retrying.backoff_ceiling(10**30, DEFAULT) == 900
    assert retrying.backoff_delay(1, policy(0, 0)) == 0


def test_the_sqs_visibility_cap_bounds_every_delay() -> None:
    huge = policy(40_000, 43_200)
    assert retrying.backoff_ceiling(5, huge) == SQS_CAP
    assert retrying.backoff_delay(5, huge, random=lambda: 1.0) == SQS_CAP


def test_attempts_exhausted_at_max_attempts() -> None:
    assert [retrying.attempts_exhausted(n, DEFAULT) for n in range(1, 7)] == [False] * 4 + [True] * 2
    assert retrying.attempts_exhausted(1, policy(1, 1, attempts=1))


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        (0.0, 0),
        (0.2, 1),
        (2.0, 2),
        (2.01, 3),
        (-5.0, 0),
        (float("nan"), 0),
        (50_000.0, 43_170),
        (float("inf"), 43_170),
    ],
)
def test_visibility_timeout_rounds_up_within_the_cap(delay: float, seconds: int) -> None:
    assert retrying.visibility_timeout(delay) == seconds


def test_visibility_timeout_counts_the_cap_from_the_receive() -> None:
    assert retrying.visibility_timeout(600, held_for=43_100.5) == 69  # 43 200 - 43 100.5 - 30, down
    assert retrying.visibility_timeout(60, held_for=43_100.5) == 60
    assert retrying.visibility_timeout(60, held_for=50_000) == 0


@given(
    delay=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    held_for=st.floats(min_value=0, max_value=1e5, allow_nan=False),
)
def test_visibility_timeout_never_early_never_past_twelve_hours(delay: float, held_for: float) -> None:
    seconds = retrying.visibility_timeout(delay, held_for=held_for)
    room = SQS_CAP - retrying.VISIBILITY_CAP_MARGIN_SECONDS - held_for
    assert isinstance(seconds, int) and 0 <= seconds <= max(0.0, room)
    if math.ceil(delay) <= room:
        assert seconds == math.ceil(delay)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("99999999", SQS_CAP),
        ("Fri, 14 Mar 2025 15:10:26 GMT", 60.0),
        ("Fri, 14 Mar 2025 15:10:26 -0000", 60.0),
        ("Fri, 14 Mar 2025 16:10:26 +0100", 60.0),
        ("Fri, 14 Mar 2025 15:00:00 GMT", 0.0),  # in the past
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1e3", None),
        ("12 apples", None),
        ("Fri, 99 Mar 2025 15:10:26 GMT", None),
        ("Fri, 14 Mar 2025 25:10:26 GMT", None),
    ],
)
def test_retry_after_delay(value: str | None, expected: float | None) -> None:
    assert retrying.retry_after_delay(value, now=NOW) == expected
    assert retrying.retry_after_delay(value, now=NOW.timestamp()) == expected


def test_naive_now_is_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert retrying.retry_after_delay("Fri, 14 Mar 2025 15:10:26 GMT", now=naive) == 60.0


# --- properties ----------------------------------------------------------------------


@st.composite
def valid_policies(draw: st.DrawFn) -> spec.RetrySpec:
    base = draw(st.floats(min_value=0, max_value=SQS_CAP))
    cap = draw(st.floats(min_value=base, max_value=SQS_CAP))
    return policy(base, cap, draw(st.integers(min_value=1, max_value=1000)))


counts = st.integers(min_value=-5, max_value=5000)
fractions = st.floats(min_value=0, max_value=1)


@given(valid_policies(), counts, fractions)
def test_delay_within_half_step_and_step_and_cap(p: spec.RetrySpec, count: int, fraction: float) -> None:
    step = retrying.backoff_ceiling(count, p)
    delay = retrying.backoff_delay(count, p, random=lambda: fraction)
    assert step / 2 <= delay <= step <= p.max_delay_seconds <= SQS_CAP
    if p.base_delay_seconds > 0:
        assert delay > 0


@given(valid_policies(), counts)
def test_upper_bound_never_decreases(p: spec.RetrySpec, count: int) -> None:
    assert retrying.backoff_ceiling(count, p) <= retrying.backoff_ceiling(count + 1, p)


@given(valid_policies())
def test_the_cap_is_reached(p: spec.RetrySpec) -> None:
    assume(p.base_delay_seconds > 0)
    assert retrying.backoff_ceiling(2000, p) == p.max_delay_seconds
    assert retrying.backoff_delay(2000, p, random=lambda: 1.0) == p.max_delay_seconds


@given(st.integers(min_value=0, max_value=10**9))
def test_delta_seconds_round_trip(seconds: int) -> None:
    assert retrying.retry_after_delay(str(seconds), now=NOW) == min(seconds, SQS_CAP)


@given(
    st.datetimes(
        min_value=datetime.datetime(1990, 1, 1),
        max_value=datetime.datetime(2100, 1, 1),
        timezones=st.just(datetime.UTC),
    ),
    st.integers(min_value=-(10**6), max_value=10**6),
)
def test_http_date_round_trips(now: datetime.datetime, offset: int) -> None:
    now = now.replace(microsecond=0)
    header = email.utils.format_datetime(now + datetime.timedelta(seconds=offset), usegmt=True)
    assert retrying.retry_after_delay(header, now=now) == min(max(offset, 0), SQS_CAP)


@given(st.text(max_size=40))
def test_garbage_never_raises(value: str) -> None:
    result = retrying.retry_after_delay(value, now=NOW)
    assert result is None or 0 <= result <= SQS_CAP
