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
    assert lanes.finish("a", ordering.Finish.DONE, identities=frozenset({"a1"}), now=0) == []
    assert names(lanes.start_ready(0, limit=10)) == ["a2"]


def test_standard_lane_delivers_in_event_time_order_whatever_the_arrival_order() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    for item in [Item("end", "c", 30), Item("acw", "c", 40), Item("start", "c", 10)]:
        add(lanes, item)
    seen = []
    while started := lanes.start_ready(0, limit=1):
        seen.extend(names(started))
        lanes.finish("c", ordering.Finish.DONE, identities=started[0].item.identities, now=0)
    assert seen == ["start", "end", "acw"]
    assert len(lanes) == 0


def test_failed_message_blocks_its_lane_until_it_comes_back() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    add(lanes, Item("first", "c", 1))
    add(lanes, Item("other", "d", 1))
    first, other = lanes.start_ready(0, limit=10)
    assert lanes.finish("c", ordering.Finish.FAILED, identities=first.item.identities, now=1) == []
    add(lanes, Item("second", "c", 2), now=2)
    assert lanes.is_blocked("c")
    assert lanes.start_ready(2, limit=10) == []  # held: the failed event has not come back
    add(lanes, Item("first", "c", 1), now=5)  # redelivered
    assert names(lanes.start_ready(5, limit=10)) == ["first"]
    lanes.finish("c", ordering.Finish.DONE, identities=first.item.identities, now=5)
    assert names(lanes.start_ready(5, limit=10)) == ["second"]
    del other


def test_a_failed_message_back_takes_its_event_time_place_behind_an_earlier_one_that_came_meanwhile() -> None:
    """A standard queue hands events over in any order: while the failed message was away (a
    credential refused, an outage), an event of the same conversation with an EARLIER event
    time arrived. The failed one, back, must not jump it: the lane frees and runs in event-time
    order (LocalStack showed it: 401s while events arrived, then the later event accepted first)."""
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    add(lanes, Item("later", "c", 5))
    (later,) = lanes.start_ready(0, limit=1)
    lanes.finish("c", ordering.Finish.FAILED, identities=later.item.identities, now=1)
    add(lanes, Item("earlier", "c", 3), now=2)
    assert lanes.start_ready(2, limit=1) == []  # held while the failed one is away
    add(lanes, Item("later", "c", 5), now=3)  # back
    assert names(lanes.start_ready(3, limit=1)) == ["earlier"]
    lanes.finish("c", ordering.Finish.DONE, identities=frozenset({"earlier"}), now=3)
    assert names(lanes.start_ready(3, limit=1)) == ["later"]


def test_a_blocked_lane_moves_on_after_the_hold_limit() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    add(lanes, Item("first", "c", 1))
    (first,) = lanes.start_ready(0, limit=1)
    lanes.finish("c", ordering.Finish.FAILED, identities=first.item.identities, now=0)
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
            name, ordering.Finish.FAILED, identities=started.item.identities, now=0, hold_seconds=hold
        )
        add(lanes, Item(f"{name}-next", name, 2))
        assert lanes.next_deadline() == expected
        assert lanes.start_ready(expected - 0.1, limit=1) == []
        assert names(lanes.start_ready(expected, limit=1)) == [f"{name}-next"]
        lanes.finish(name, ordering.Finish.DONE, identities=frozenset(), now=expected)


def blocked_behind_a_failure() -> ordering.Lanes[Item]:
    """Lane "c": "first" failed at 0, due back at 2, held by time until 7 (60 at most);
    "second" arrived at 1 and waits behind it."""
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60, receives_to_overdue=2)
    add(lanes, Item("first", "c", 1))
    (first,) = lanes.start_ready(0, limit=1)
    lanes.finish(
        "c", ordering.Finish.FAILED, identities=first.item.identities, now=0, hold_seconds=7, due_seconds=2
    )
    add(lanes, Item("second", "c", 2), now=1)
    return lanes


def test_a_failed_message_is_overdue_only_once_receives_after_it_was_due_missed_it() -> None:
    # Due back 2 s after failing, held 7 s by time; a worker that did not receive meanwhile
    # (its budget full of slow deliveries, a slow SQS) has not given it its chance to return.
    lanes = blocked_behind_a_failure()
    assert lanes.next_deadline() == 60  # time alone: only the hold limit
    assert lanes.start_ready(30, limit=1) == []
    lanes.received(1.5, now=31)  # began before it was due: no chance to bring it
    lanes.received(2.5, now=31)
    assert lanes.start_ready(31, limit=1) == []
    lanes.received(3.0, now=32)  # the second receive that could have brought it
    assert names(lanes.start_ready(32, limit=1)) == ["second"]


def test_full_receives_are_no_proof_that_a_failed_message_is_not_back() -> None:
    # After an outage the queue has a backlog: receives come back full of other messages at
    # once, and the failed one, visible again, waits behind them (LocalStack requeues it at
    # the back; SQS promises no order). Only a receive that came back short (the queue gave
    # all it would) is a chance it had to come back here.
    lanes = blocked_behind_a_failure()
    lanes.received(3.0, now=31, full=True)
    lanes.received(3.5, now=31, full=True)
    lanes.received(4.0, now=32, full=True)
    assert lanes.start_ready(32, limit=1) == []
    lanes.received(5.0, now=33)  # short: the backlog is gone and it was not in it
    assert lanes.start_ready(33, limit=1) == []
    lanes.received(6.0, now=34)
    assert names(lanes.start_ready(34, limit=1)) == ["second"]


def test_receives_alone_do_not_end_a_hold_before_its_time() -> None:
    lanes = blocked_behind_a_failure()
    for began in (2.0, 3.0, 4.0):
        lanes.received(began, now=began + 1)
    assert lanes.next_deadline() == 7
    assert lanes.start_ready(6.9, limit=1) == []
    assert names(lanes.start_ready(7, limit=1)) == ["second"]


def test_a_stalled_worker_lets_time_alone_end_a_hold() -> None:
    # Every place in hand taken by blocked lanes: no receive can begin, so none can count.
    lanes = blocked_behind_a_failure()
    lanes.set_stalled(True, now=5)
    assert lanes.next_deadline() == 7
    assert names(lanes.start_ready(7, limit=1)) == ["second"]


def test_dead_lettered_message_does_not_block() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    add(lanes, Item("poison", "c", 1))
    add(lanes, Item("next", "c", 2))
    (first,) = lanes.start_ready(0, limit=1)
    lanes.finish("c", ordering.Finish.DEAD, identities=first.item.identities, now=0)
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
        lanes.finish("g", ordering.Finish.DONE, identities=started[0].item.identities, now=0)
    assert seen == ["g1", "g2", "g3"]


def test_fifo_failure_hands_back_the_group_and_nothing_passes_the_failed_message() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=True, hold_limit_seconds=60, reread_hold_seconds=5)
    for item in [Item("g1", "g", 1), Item("g3", "g", 3), Item("g2", "g", 2), Item("h1", "h", 0)]:
        add(lanes, item)
    started = lanes.start_ready(0, limit=10)
    assert names(started) == ["g1", "h1"]
    released = lanes.finish(
        "g",
        ordering.Finish.FAILED,
        identities=started[0].item.identities,
        now=0,
        hold_seconds=9,
        due_seconds=4,
    )
    assert [item.name for item in released] == ["g2", "g3"]  # back to the queue at once, in order
    # Before the failed message is due, an unexpected message of its group is refused until then.
    assert lanes.add("g", Item("g4", "g", 4), identities=frozenset({"g4"}), order=4, now=1) == 3.0
    # The released ones come back at once (LocalStack serves them): refused until then too...
    assert lanes.add("g", Item("g3", "g", 3), identities=frozenset({"g3"}), order=3, now=1) == 3.0
    assert lanes.add("g", Item("g2", "g", 2), identities=frozenset({"g2"}), order=2, now=1) == 3.0
    # ...and after it, held: nothing passes the failed message.
    assert lanes.add("g", Item("g3", "g", 3), identities=frozenset({"g3"}), order=3, now=4.5) is None
    assert lanes.add("g", Item("g2", "g", 2), identities=frozenset({"g2"}), order=2, now=4.5) is None
    assert lanes.start_ready(4.5, limit=10) == []
    # The failed message is back: it starts first, then the rest in order.
    assert lanes.add("g", Item("g1", "g", 1), identities=frozenset({"g1"}), order=1, now=5) is None
    seen = []
    while ready := lanes.start_ready(6, limit=10):
        seen.extend(names(ready))
        lanes.finish("g", ordering.Finish.DONE, identities=ready[0].item.identities, now=6)
    assert seen == ["g1", "g2", "g3"]  # g4 waits for its own return


def test_fifo_lane_moves_on_when_what_it_expects_went_elsewhere() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=True, hold_limit_seconds=60, reread_hold_seconds=2)
    add(lanes, Item("g1", "g", 1))
    add(lanes, Item("g2", "g", 2))
    (first,) = lanes.start_ready(0, limit=1)
    identities = first.item.identities
    released = lanes.finish("g", ordering.Finish.FAILED, identities=identities, now=0, hold_seconds=3)
    assert [item.name for item in released] == ["g2"]
    # Another replica got g1 and g2; g3 comes here: refused once, then it waits for them...
    assert lanes.add("g", Item("g3", "g", 3), identities=frozenset({"g3"}), order=3, now=0.5) == 0.0
    assert lanes.add("g", Item("g3", "g", 3), identities=frozenset({"g3"}), order=3, now=1) is None
    assert lanes.start_ready(2.9, limit=1) == []
    assert lanes.next_deadline() == 3.0
    # ...no longer than the failed one's hold.
    assert names(lanes.start_ready(3.0, limit=1)) == ["g3"]


def test_a_redelivered_fifo_message_at_an_idle_lane_is_sent_back_once_so_its_group_is_read_again() -> None:
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=True, hold_limit_seconds=60, reread_hold_seconds=5)
    tail = Item("g3", "g", 3)
    assert lanes.add("g", tail, identities=tail.identities, order=3, now=0, redelivered=True) == 0.0
    # An earlier message arrives meanwhile: it takes its place; the tail comes back after it.
    head = Item("g1", "g", 1)
    assert lanes.add("g", head, identities=head.identities, order=1, now=1, redelivered=True) is None
    assert lanes.add("g", tail, identities=tail.identities, order=3, now=1, redelivered=True) is None
    assert lanes.start_ready(1, limit=1) == []  # settling: a concurrent receive may hold g2
    assert lanes.next_deadline() == 1.5
    assert names(lanes.start_ready(1.5, limit=1)) == ["g1"]
    # A standard lane never refuses.
    standard: ordering.Lanes[Item] = ordering.Lanes(fifo=False, hold_limit_seconds=60)
    assert standard.add("g", tail, identities=tail.identities, order=3, now=0, redelivered=True) is None


def test_a_lane_that_only_waits_for_a_refused_message_is_forgotten_once_the_wait_runs_out() -> None:
    # The refused message went to another replica: nothing of its group arrives here again.
    lanes: ordering.Lanes[Item] = ordering.Lanes(fifo=True, hold_limit_seconds=60, reread_hold_seconds=5)
    tail = Item("g3", "g", 3)
    assert lanes.add("g", tail, identities=tail.identities, order=3, now=0, redelivered=True) == 0.0
    add(lanes, Item("h1", "h", 1), now=0)
    assert len(lanes) == 2
    assert names(lanes.start_ready(5.0, limit=10)) == ["h1"]
    assert len(lanes) == 1  # g's wait ran out at 5 s: only h, running, is left
    lanes.finish("h", ordering.Finish.DONE, identities=frozenset({"h1"}), now=5.0)
    assert len(lanes) == 0


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
    """Standard lanes: random adds, starts, finishes, receives and stalls against a model; the
    invariants hold after every step. A failure is due back in 1 s and held 3 s by time; it
    is overdue once that time passed and two receives begun after it was due came back, or
    the worker is stalled; never later than the 10 s hold limit. (FIFO lanes:
    :class:`FifoLaneMachine`.)"""

    def __init__(self) -> None:
        super().__init__()
        self.lanes: ordering.Lanes[Item] = ordering.Lanes(
            fifo=False, hold_limit_seconds=10, receives_to_overdue=2
        )
        self.stalled = False
        self.now = 0.0
        self.seq = 0
        self.running: dict[str, Item] = {}
        self.pending: dict[str, list[tuple[float, int, Item]]] = {}  # (position, seq, item)
        self.blocked: dict[str, tuple[Item, float, int]] = {}  # key -> (failed item, since, receives)
        self.comebacks: list[Item] = []  # failed items SQS may redeliver

    def _add(self, item: Item, *, redelivered: bool = False) -> None:
        refused = self.lanes.add(
            item.key,
            item,
            identities=item.identities,
            order=item.order,
            now=self.now,
            redelivered=redelivered,
        )
        assert refused is None, "a standard lane never refuses"
        self.seq += 1
        position = item.order
        blocked = self.blocked.get(item.key)
        if blocked is not None and blocked[0] == item:
            del self.blocked[item.key]  # back: the lane is free; the item takes its event-time place
        self._expire(item.key)
        self.pending.setdefault(item.key, []).append((position, self.seq, item))

    def _expire(self, key: str) -> None:
        blocked = self.blocked.get(key)
        if blocked is None:
            return
        _, since, receives = blocked
        if self.now >= since + 10 or (self.now >= since + 3 and (self.stalled or receives >= 2)):
            del self.blocked[key]

    @rule(ago=st.floats(0, 2))
    def receive(self, ago: float) -> None:
        began = self.now - ago
        self.lanes.received(began, self.now)
        for key, (item, since, receives) in list(self.blocked.items()):
            if since + 1 <= began:
                self.blocked[key] = (item, since, receives + 1)
                self._expire(key)

    @rule(stalled=st.booleans())
    def stall(self, stalled: bool) -> None:
        self.lanes.set_stalled(stalled, self.now)
        if stalled and not self.stalled:
            self.stalled = True
            for key in list(self.blocked):
                self._expire(key)
        self.stalled = stalled

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

    @rule(data=st.data(), result=st.sampled_from(list(ordering.Finish)))
    @precondition(lambda self: bool(self.running))
    def finish(self, data: st.DataObject, result: ordering.Finish) -> None:
        key = data.draw(st.sampled_from(sorted(self.running)))
        item = self.running.pop(key)
        released = self.lanes.finish(
            key, result, identities=item.identities, now=self.now, hold_seconds=3, due_seconds=1
        )
        assert released == []
        if result is not ordering.Finish.FAILED:
            self._expire(key)
            return
        self.comebacks.append(item)
        self.blocked[key] = (item, self.now, 0)

    @invariant()
    def nothing_lost_nothing_invented(self) -> None:
        held = sorted(item.name for item in self.lanes.pending_items())
        model = sorted(entry[2].name for entries in self.pending.values() for entry in entries)
        assert held == model
        assert self.lanes.running_count == len(self.running)


TestLaneMachine = LaneMachine.TestCase
TestLaneMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


REREAD_HOLD = 3.0
FAILED_HOLD = 5.0


class FifoLaneMachine(RuleBasedStateMachine):
    """FIFO lanes, against the rules as properties (not a copy of the algorithm): a group's
    message never starts while a lower-ordered message of the group is running, waiting in
    the lane, or out in the queue and still expected back; a message is not sent back more
    than ``MAX_REFUSALS`` times; nothing is lost; and once every expectation has run out,
    everything gets through."""

    def __init__(self) -> None:
        super().__init__()
        self.lanes: ordering.Lanes[Item] = ordering.Lanes(
            fifo=True, hold_limit_seconds=10, reread_hold_seconds=REREAD_HOLD, settle_seconds=0.25
        )
        self.now = 0.0
        self.next_order = dict.fromkeys("ab", 0)
        self.held: set[Item] = set()
        self.running: dict[str, Item] = {}
        self.out: dict[Item, float] = {}  # handed back to the queue -> until when it is expected
        self.refusals: dict[Item, int] = {}
        self.done: set[Item] = set()

    def _add(self, item: Item, *, redelivered: bool) -> None:
        refused = self.lanes.add(
            item.key,
            item,
            identities=item.identities,
            order=item.order,
            now=self.now,
            redelivered=redelivered,
        )
        self.out.pop(item, None)
        if refused is None:
            self.held.add(item)
            return
        assert refused >= 0
        if refused in (0.0, 1.0, 2.0):  # not a failure window's refusal
            self.refusals[item] = self.refusals.get(item, 0) + 1
            assert self.refusals[item] <= ordering.MAX_REFUSALS, "a message goes back and forth"
        self.out[item] = self.now + refused + REREAD_HOLD

    @rule(key=st.sampled_from("ab"), redelivered=st.booleans())
    def add_new(self, key: str, redelivered: bool) -> None:
        self.next_order[key] += 1
        self._add(
            Item(f"{key}{self.next_order[key]}", key, float(self.next_order[key])), redelivered=redelivered
        )

    @rule(data=st.data())
    @precondition(lambda self: bool(self.out))
    def comes_back(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(sorted(self.out, key=lambda item: item.name)))
        self._add(item, redelivered=True)

    @rule(seconds=st.floats(0, 4))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(limit=st.integers(1, 2))
    def start(self, limit: int) -> None:
        for entry in self.lanes.start_ready(self.now, limit):
            item = entry.item
            assert item.key not in self.running, "two messages of one group in flight"
            earlier_held = [
                other for other in self.held if other.key == item.key and other.order < item.order
            ]
            assert not earlier_held, f"{item.name} started before {earlier_held}"
            expected = [
                other
                for other, until in self.out.items()
                if other.key == item.key and other.order < item.order and until > self.now
            ]
            assert not expected, f"{item.name} started while {expected} were expected back"
            self.held.remove(item)
            self.running[item.key] = item

    @rule(data=st.data(), result=st.sampled_from(list(ordering.Finish)), due=st.floats(0, 3))
    @precondition(lambda self: bool(self.running))
    def finish(self, data: st.DataObject, result: ordering.Finish, due: float) -> None:
        key = data.draw(st.sampled_from(sorted(self.running)))
        item = self.running.pop(key)
        released = self.lanes.finish(
            key, result, identities=item.identities, now=self.now, hold_seconds=FAILED_HOLD, due_seconds=due
        )
        if result is not ordering.Finish.FAILED:
            assert released == []
            self.done.add(item)
            return
        group = sorted((other for other in self.held if other.key == key), key=lambda other: other.order)
        assert released == group, "a failure hands back the rest of the group, in order"
        self.held -= set(group)
        self.out[item] = self.now + FAILED_HOLD
        for other in group:
            self.out[other] = self.now + REREAD_HOLD

    @invariant()
    def nothing_lost_nothing_invented(self) -> None:
        assert set(self.lanes.pending_items()) == self.held
        assert self.lanes.running_count == len(self.running)

    def teardown(self) -> None:
        # Liveness: once every expectation has run out, what is held gets through, in order.
        self.now += 20
        while self.running:
            key, item = self.running.popitem()
            self.lanes.finish(key, ordering.Finish.DONE, identities=item.identities, now=self.now)
        while started := self.lanes.start_ready(self.now, 10):
            for entry in started:
                self.held.discard(entry.item)
                self.lanes.finish(
                    entry.key, ordering.Finish.DONE, identities=entry.item.identities, now=self.now
                )
        assert not self.held, f"stuck in the lanes: {sorted(item.name for item in self.held)}"


TestFifoLaneMachine = FifoLaneMachine.TestCase
TestFifoLaneMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
