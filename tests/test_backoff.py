"""The one capped exponential backoff (fanout_core.backoff), property-tested."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fanout_core import backoff
from workers import retrying

_bases = st.floats(min_value=0.001, max_value=100.0)
_caps = st.floats(min_value=0.001, max_value=1e6)


@given(st.integers(-5, 10_000), _bases, _caps)
def test_never_above_the_cap_and_never_below_the_first_pause(failures: int, base: float, cap: float) -> None:
    pause = backoff.exponential(failures, base=base, cap=cap)
    assert min(base, cap) <= pause <= cap


@given(st.integers(1, 200), _bases, _caps)
def test_each_failure_doubles_the_pause_until_the_cap(failures: int, base: float, cap: float) -> None:
    pause = backoff.exponential(failures, base=base, cap=cap)
    following = backoff.exponential(failures + 1, base=base, cap=cap)
    assert following == min(2 * pause, cap)


def test_the_first_pauses() -> None:
    assert [backoff.exponential(n, base=1.0, cap=30.0) for n in range(8)] == [1, 1, 2, 4, 8, 16, 30, 30]


def test_the_worker_uses_the_same_one() -> None:
    assert retrying.exponential_delay is backoff.exponential
