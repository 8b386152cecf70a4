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


def test_fifo_lane_runs_in_sequence_number_order_whatever_the_arrival_order() -> None:
    # Two pollers (or an SQS implementation that does not lock the group) can hand a
    # group's messages over out of order: the sequence number decides, not the arrival.
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=True, hold_limit_seconds=60)
    for item in [Item("g3", "g", 30), Item("g1", "g", 10), Item("g2", "g", 20)]:
        add(lanes, item)
    seen = []
    while started := lanes.start_ready(0, limit=1):
        seen.extend(names(started))
        lanes.finish("g", ordering.Result.DONE, identities=started[0].item.identities, now=0)
    assert seen == ["g1", "g2", "g3"]


def test_fifo_failure_hands_back_the_group_refuses_it_until_due_then_waits_for_the_failed_one() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=True, hold_limit_seconds=60)
    for item in [Item("g1", "g", 1), Item("g3", "g", 3), Item("g2", "g", 2), Item("h1", "h", 0)]:
        add(lanes, item)
    started = lanes.start_ready(0, limit=10)
    assert names(started) == ["g1", "h1"]
    released = lanes.finish(
        "g",
        ordering.Result.FAILED,
        identities=started[0].item.identities,
        now=0,
        hold_seconds=9.0,
        due_seconds=4.0,
    )
    assert [item.name for item in released] == ["g2", "g3"]  # back to the queue at once
    assert lanes.start_ready(0, limit=10) == []
    # Before the failed message is due, a later one of its group is refused, with the time left.
    assert lanes.add("g", Item("g2", "g", 2), identities=frozenset({"g2"}), order=2, now=1) == 3.0
    assert list(lanes.pending_items()) == []
    # After that, arrivals wait for it (an SQS double may serve the group's tail first)...
    assert lanes.add("g", Item("g3", "g", 3), identities=frozenset({"g3"}), order=3, now=4.5) is None
    assert lanes.start_ready(4.5, limit=10) == []
    # ...and when it is back it goes first.
    assert lanes.add("g", Item("g1", "g", 1), identities=frozenset({"g1"}), order=1, now=5) is None
    assert lanes.add("g", Item("g2", "g", 2), identities=frozenset({"g2"}), order=2, now=5) is None
    seen = []
    while ready := lanes.start_ready(5, limit=10):
        seen.extend(names(ready))
        lanes.finish("g", ordering.Result.DONE, identities=ready[0].item.identities, now=5)
    assert seen == ["g1", "g2", "g3"]


def test_fifo_lane_opens_again_when_the_failed_message_went_elsewhere() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=True, hold_limit_seconds=60)
    add(lanes, Item("g1", "g", 1))
    (first,) = lanes.start_ready(0, limit=1)
    lanes.finish(
        "g",
        ordering.Result.FAILED,
        identities=first.item.identities,
        now=0,
        hold_seconds=3.0,
        due_seconds=1.0,
    )
    assert lanes.add("g", Item("g2", "g", 2), identities=frozenset({"g2"}), order=2, now=1.5) is None
    assert lanes.start_ready(2.9, limit=1) == []
    assert names(lanes.start_ready(3.0, limit=1)) == ["g2"]


def test_a_redelivered_fifo_message_alone_is_sent_back_once_so_its_group_is_read_again() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=True, hold_limit_seconds=60)
    tail = Item("g3", "g", 3)
    assert lanes.add("g", tail, identities=tail.identities, order=3, now=0, redelivered=True) == 0.0
    # Back again, now with its predecessors: held, and delivered after them.
    assert lanes.add("g", tail, identities=tail.identities, order=3, now=1, redelivered=True) is None
    head = Item("g1", "g", 1)
    assert lanes.add("g", head, identities=head.identities, order=1, now=1, redelivered=True) is None
    assert names(lanes.start_ready(1, limit=1)) == ["g1"]
    # A standard lane never refuses.
    standard: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    assert standard.add("g", tail, identities=tail.identities, order=3, now=0, redelivered=True) is None


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
        self.refuse_until: dict[str, float] = {}  # FIFO: key -> end of the refusal window
        self.reread: set[str] = set()  # FIFO: redelivered items already sent back once
        self.started_any = False

    @rule(fifo=st.booleans())
    @precondition(lambda self: not self.started_any and not self.pending)
    def choose_kind(self, fifo: bool) -> None:
        self.fifo = fifo
        self.lanes = ordering.Lanes(fifo=fifo, hold_limit_seconds=10)

    def _add(self, item: Item, *, redelivered: bool = False) -> None:
        refused = self.lanes.add(
            item.key,
            item,
            identities=item.identities,
            order=item.order,
            now=self.now,
            redelivered=redelivered,
        )
        self.seq += 1
        position = item.order
        blocked = self.blocked.get(item.key)
        if blocked is not None and blocked[0] == item:
            position = float("-inf")
            del self.blocked[item.key]
            self.refuse_until.pop(item.key, None)
        elif self.fifo:
            until = self.refuse_until.get(item.key)
            if until is not None and self.now < until:
                assert refused == until - self.now, "refused for the time until the failed one is due"
                return
            self.refuse_until.pop(item.key, None)
            self._expire(item.key)
            idle = (
                not self.pending.get(item.key)
                and item.key not in self.running
                and item.key not in self.blocked
            )
            if redelivered and idle and item.name not in self.reread:
                self.reread.add(item.name)
                assert refused == 0.0, "a redelivered message alone is sent back once"
                return
        assert refused is None
        self._expire(item.key)
        self.pending.setdefault(item.key, []).append((position, self.seq, item))

    def _expire(self, key: str) -> None:
        blocked = self.blocked.get(key)
        if blocked is not None and self.now >= blocked[1] + 10:
            del self.blocked[key]
            self.refuse_until.pop(key, None)

    @rule(key=st.sampled_from("abc"), order=st.integers(0, 5))
    def add_new(self, key: str, order: int) -> None:
        self._add(Item(f"m{self.seq}", key, float(order)))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.comebacks))
    def failed_comes_back(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(self.comebacks))
        self.comebacks.remove(item)
        self._add(item, redelivered=True)

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

    @rule(
        data=st.data(),
        result=st.sampled_from(list(ordering.Result)),
        due=st.one_of(st.none(), st.floats(0.5, 12)),
    )
    @precondition(lambda self: bool(self.running))
    def finish(self, data: st.DataObject, result: ordering.Result, due: float | None) -> None:
        key = data.draw(st.sampled_from(sorted(self.running)))
        item = self.running.pop(key)
        released = self.lanes.finish(key, result, identities=item.identities, now=self.now, due_seconds=due)
        if result is ordering.Result.FAILED and self.fifo and due:
            self.refuse_until[key] = self.now + min(due, 10)
        if result is not ordering.Result.FAILED:
            assert released == []
            self._expire(key)
            return
        self.comebacks.append(item)
        self.blocked[key] = (item, self.now)
        if self.fifo:
            in_order = [entry[2] for entry in sorted(self.pending.get(key, []), key=lambda e: (e[0], e[1]))]
            assert released == in_order, "FIFO failure must hand back the rest of the group in order"
            self.pending[key] = []
        else:
            assert released == []

    @invariant()
    def nothing_lost_nothing_invented(self) -> None:
        held = sorted(item.name for item in self.lanes.pending_items())
        model = sorted(entry[2].name for entries in self.pending.values() for entry in entries)
        assert held == model
        assert self.lanes.running_count == len(self.running)


TestLaneMachine = LaneMachine.TestCase
TestLaneMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
