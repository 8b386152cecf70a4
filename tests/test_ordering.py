"""Per-key lanes: unit examples and a hypothesis state machine over every operation."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from workers import ordering


@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    key: str
    order: float

    @property
    def identities(self) -> frozenset[Hashable]:
        return frozenset({self.name})


def add(lanes: ordering.Lanes[Item], item: Item, now: float = 0.0) -> None:
    lanes.add(item.key, item, identities=item.identities, order=item.order, now=now)


def names(started: list[ordering.Started[Item]]) -> list[str]:
    return [s.item.name for s in started]


def test_one_message_per_lane_and_lanes_in_parallel() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    for item in [Item("a1", "a", 1), Item("a2", "a", 2), Item("b1", "b", 1)]:
        add(lanes, item)
    assert names(lanes.start_ready(0, limit=10)) == ["a1", "b1"]
    assert lanes.start_ready(0, limit=10) == []
    assert lanes.finish("a", ordering.Result.DONE, identities=frozenset({"a1"}), now=0) == []
    assert names(lanes.start_ready(0, limit=10)) == ["a2"]


def test_standard_lane_delivers_in_event_time_order_whatever_the_arrival_order() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    for item in [Item("end", "c", 30), Item("acw", "c", 40), Item("start", "c", 10)]:
        add(lanes, item)
    seen = []
    while started := lanes.start_ready(0, limit=1):
        seen.extend(names(started))
        lanes.finish("c", ordering.Result.DONE, identities=started[0].item.identities, now=0)
    assert seen == ["start", "end", "acw"]
    assert len(lanes) == 0


def test_failed_message_blocks_its_lane_until_it_comes_back_and_then_goes_first() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    add(lanes, Item("first", "c", 1))
    add(lanes, Item("other", "d", 1))
    first, other = lanes.start_ready(0, limit=10)
    assert lanes.finish("c", ordering.Result.FAILED, identities=first.item.identities, now=1) == []
    add(lanes, Item("second", "c", 2), now=2)
    assert lanes.is_blocked("c")
    assert lanes.start_ready(2, limit=10) == []  # held: the failed event has not come back
    add(lanes, Item("first", "c", 1), now=5)  # redelivered
    assert names(lanes.start_ready(5, limit=10)) == ["first"]
    lanes.finish("c", ordering.Result.DONE, identities=first.item.identities, now=5)
    assert names(lanes.start_ready(5, limit=10)) == ["second"]
    del other


def test_a_blocked_lane_moves_on_after_the_hold_limit() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    add(lanes, Item("first", "c", 1))
    (first,) = lanes.start_ready(0, limit=1)
    lanes.finish("c", ordering.Result.FAILED, identities=first.item.identities, now=0)
    add(lanes, Item("second", "c", 2), now=1)
    assert lanes.next_deadline() == 60
    assert lanes.start_ready(59.9, limit=1) == []
    assert names(lanes.start_ready(60, limit=1)) == ["second"]


def test_a_failure_holds_its_lane_only_as_long_as_the_caller_says_within_the_limit() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    for name, hold, expected in (("short", 5.0, 5.0), ("long", 600.0, 60.0)):
        add(lanes, Item(name, name, 1))
        (started,) = lanes.start_ready(0, limit=1)
        lanes.finish(
            name, ordering.Result.FAILED, identities=started.item.identities, now=0, hold_seconds=hold
        )
        add(lanes, Item(f"{name}-next", name, 2))
        assert lanes.next_deadline() == expected
        assert lanes.start_ready(expected - 0.1, limit=1) == []
        assert names(lanes.start_ready(expected, limit=1)) == [f"{name}-next"]
        lanes.finish(name, ordering.Result.DONE, identities=frozenset(), now=expected)


def test_dead_lettered_message_does_not_block() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    add(lanes, Item("poison", "c", 1))
    add(lanes, Item("next", "c", 2))
    (first,) = lanes.start_ready(0, limit=1)
    lanes.finish("c", ordering.Result.DEAD, identities=first.item.identities, now=0)
    assert names(lanes.start_ready(0, limit=1)) == ["next"]


def test_fifo_failure_hands_back_the_rest_of_the_group_in_arrival_order() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=True, hold_limit_seconds=60)
    # event times are ignored on FIFO queues: arrival (sequence) order rules
    for item in [Item("g1", "g", 30), Item("g2", "g", 10), Item("g3", "g", 20), Item("h1", "h", 0)]:
        add(lanes, item)
    started = lanes.start_ready(0, limit=10)
    assert names(started) == ["g1", "h1"]
    released = lanes.finish("g", ordering.Result.FAILED, identities=started[0].item.identities, now=0)
    assert [item.name for item in released] == ["g2", "g3"]
    assert not lanes.is_blocked("g")
    assert lanes.start_ready(0, limit=10) == []


def test_limit_caps_parallel_starts_and_take_pending_empties_everything() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    for index in range(5):
        add(lanes, Item(f"k{index}", f"k{index}", 0))
    add(lanes, Item("k0-later", "k0", 1))
    assert len(lanes.start_ready(0, limit=2)) == 2
    pending = lanes.take_pending()
    assert sorted(item.name for item in pending) == ["k0-later", "k2", "k3", "k4"]
    assert lanes.start_ready(0, limit=10) == []


class LaneMachine(RuleBasedStateMachine):
    """Random adds, starts and finishes against a model; the invariants hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.fifo = False
        self.lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=10)
        self.now = 0.0
        self.seq = 0
        self.running: dict[str, Item] = {}
        self.pending: dict[str, list[tuple[float, int, Item]]] = {}  # (position, seq, item)
        self.blocked: dict[str, tuple[Item, float]] = {}  # standard: key -> (failed item, since)
        self.comebacks: list[Item] = []  # failed items SQS may redeliver
        self.started_any = False

    @rule(fifo=st.booleans())
    @precondition(lambda self: not self.started_any and not self.pending)
    def choose_kind(self, fifo: bool) -> None:
        self.fifo = fifo
        self.lanes = ordering.Lanes(fifo=fifo, hold_limit_seconds=10)

    def _add(self, item: Item) -> None:
        add(self.lanes, item, self.now)
        self.seq += 1
        position = float(self.seq) if self.fifo else item.order
        blocked = self.blocked.get(item.key)
        if blocked is not None and blocked[0] == item:
            position = float("-inf")
            del self.blocked[item.key]
        self._expire(item.key)
        self.pending.setdefault(item.key, []).append((position, self.seq, item))

    def _expire(self, key: str) -> None:
        blocked = self.blocked.get(key)
        if blocked is not None and self.now >= blocked[1] + 10:
            del self.blocked[key]

    @rule(key=st.sampled_from("abc"), order=st.integers(0, 5))
    def add_new(self, key: str, order: int) -> None:
        self._add(Item(f"m{self.seq}", key, float(order)))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.comebacks))
    def failed_comes_back(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(self.comebacks))
        self.comebacks.remove(item)
        self._add(item)

    @rule(seconds=st.floats(0, 6))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(limit=st.integers(1, 3))
    def start(self, limit: int) -> None:
        for key in list(self.blocked):
            self._expire(key)
        started = self.lanes.start_ready(self.now, limit)
        self.started_any = self.started_any or bool(started)
        assert len(started) <= limit
        for entry in started:
            key = str(entry.key)
            assert key not in self.running, "two messages of one lane in flight"
            assert key not in self.blocked, "a blocked lane started a message"
            expected = min(self.pending[key], key=lambda entry: (entry[0], entry[1]))
            assert entry.item == expected[2], "lane started a message out of order"
            self.pending[key].remove(expected)
            self.running[key] = entry.item
        ready_left = [
            key
            for key, items in self.pending.items()
            if items and key not in self.running and key not in self.blocked
        ]
        assert len(started) == limit or not ready_left, "a ready lane was left waiting below the limit"

    @rule(data=st.data(), result=st.sampled_from(list(ordering.Result)))
    @precondition(lambda self: bool(self.running))
    def finish(self, data: st.DataObject, result: ordering.Result) -> None:
        key = data.draw(st.sampled_from(sorted(self.running)))
        item = self.running.pop(key)
        released = self.lanes.finish(key, result, identities=item.identities, now=self.now)
        if result is not ordering.Result.FAILED:
            assert released == []
            self._expire(key)
            return
        self.comebacks.append(item)
        if self.fifo:
            in_order = [entry[2] for entry in sorted(self.pending.get(key, []), key=lambda e: (e[0], e[1]))]
            assert released == in_order, "FIFO failure must hand back the rest of the group in order"
            self.pending[key] = []
        else:
            assert released == []
            self.blocked[key] = (item, self.now)

    @invariant()
    def nothing_lost_nothing_invented(self) -> None:
        held = sorted(item.name for item in self.lanes.pending_items())
        model = sorted(entry[2].name for entries in self.pending.values() for entry in entries)
        assert held == model
        assert self.lanes.running_count == len(self.running)


TestLaneMachine = LaneMachine.TestCase
TestLaneMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
