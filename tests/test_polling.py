"""The in-flight budget: about a second of what the sink makes room for, ``maxInFlight`` a ceiling."""

from __future__ import annotations

import asyncio

import pytest

from workers import polling


def test_the_budget_is_a_second_of_capacity_plus_what_waits_for_other_reasons() -> None:
    assert polling.budget_target(10.0, 0, ceiling=200) == 10
    assert polling.budget_target(10.0, 7, ceiling=200) == 17  # held back in lanes, or being deleted
    assert polling.budget_target(2.5, 0, ceiling=200) == 3
    assert polling.budget_target(0.01, 0, ceiling=200) == 1  # never nothing
    assert polling.budget_target(1_000.0, 0, ceiling=200) == 200  # maxInFlight is the ceiling
    assert polling.budget_target(None, 0, ceiling=200) == 200  # nothing bounds the sink


async def test_the_budget_follows_its_target_as_it_moves() -> None:
    target = [5]
    budget = polling.Budget(200, lambda: target[0])
    assert await budget.reserve(10) == 5
    reserving = asyncio.create_task(budget.reserve(10))
    await asyncio.sleep(0.3)
    assert not reserving.done()  # full at the target, far below the ceiling
    target[0] = 12  # the sink can send more now: room without a release
    assert await asyncio.wait_for(reserving, timeout=1) == 7
    target[0] = 3
    budget.release(12)
    assert await budget.reserve(10) == 3


@pytest.mark.parametrize("limit", [1, 50])
async def test_without_a_target_the_limit_is_fixed(limit: int) -> None:
    budget = polling.Budget(limit)
    assert await budget.reserve(100) == limit
    assert budget.current_limit == limit
