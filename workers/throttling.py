"""How hard a sink may drive its downstream: the decision core and its async wrapper.

Every sink owns one :class:`AsyncLimiter`; each request asks it for a :class:`Permit`
and reports a :class:`Result` when the answer is in. Four mechanisms combine, each
answering a different failure of the downstream:

* a **token bucket** refilled at this replica's pace of the fleet-wide ``rateLimit``
  (:mod:`workers.pacing`: the slice ``rate / replicas``, corrected by the downstream's
  own answers, so a wrong share — a stale replica count — costs a few throttles, not a
  flood), holding at most the pace's part of the burst;
* an **adaptive concurrency limit** (AIMD): +1 per window of successes while every slot
  is busy, halved on throttles in a row, a 503 or a timeout, always in
  ``[1, max_concurrency]``; it only grows when it is what holds requests back
  (latency-only limiters grow without bound against a rate-limited API);
* a **pause**: a ``Retry-After`` stops the whole sink until then, not just one request —
  except after an *isolated* throttle that asks for no more than
  ``SHORT_RETRY_AFTER`` (the least a delay-seconds header can say): when the configured
  rate equals the downstream's, the two buckets drift in phase and such a 429 is
  unavoidable now and then; stopping the sink for a whole second each time cost 5-30%
  of the grant in ``bench/fleet.py``. The limiter skips a beat instead (its bucket
  empties) and the throttled request alone waits its Retry-After;
* a **circuit breaker**: ``failure_threshold`` consecutive failures open it — a refused
  credential opens it at once; after ``open_seconds`` (plus up to ``OPEN_JITTER`` of it
  again, at random: replicas that met an outage together do not probe together) exactly
  one probe goes through (half-open);
  its success closes the circuit, its failure re-opens it for twice as long (capped at
  ``max_open_seconds``) — or, with ``outage_probe_share`` (the sinks set it), for the
  short period of :func:`outage_probe_seconds`: while a downstream stays down, each
  replica probes every quarter of a second to a second (jittered the same way), so that
  each finds it back within a fraction of a second. Each replica must find it itself
  (the first replica to find it spares the others nothing: they hold their share of the
  messages), and with a fixed one-second period each lost about 0.6 s of its slice per
  outage. The probes never flood: a replica sends at most ``outage_probe_share`` of its
  slice of the rate in probes and never more than one per ``MIN_PROBE_SECONDS``, or one
  per ``open_seconds`` where that is more (the fleet: at most a quarter of its rate, or
  one probe per replica per open period). A refused credential keeps the doubling: a
  probe cannot fix it before a person does.
  An outage says nothing about the rate: the pace is frozen while the circuit is open
  and resumes where it was before the failures began.

:class:`Limiter` is the pure core: the caller passes ``now`` and gets a decision
(:class:`Permit` or :class:`Wait`), so hypothesis can drive it on a fake clock
(``tests/test_throttling.py``). :class:`AsyncLimiter` is the thin wrapper sinks use: one
FIFO lock queues acquirers fairly, the holder sleeps until the decision's deadline or a
release changes the picture. The worker's pollers read :attr:`AsyncLimiter.accepting`
to stop receiving while the sink is paused or its circuit is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import enum
import math
import random
import time
from collections.abc import Callable

from workers import pacing

Clock = Callable[[], float]
_TOKEN_EPSILON = 1e-9
OPEN_JITTER = 0.5
"""An open period lasts ``open_for x (1 + OPEN_JITTER x random())``."""
SHORT_RETRY_AFTER = 1.0
"""An isolated throttle asking for at most this long does not pause the whole sink."""
OUTAGE_PROBE_SHARE = 0.25
"""While an outage lasts, a replica's probes are at most this share of its slice of the rate."""
MIN_PROBE_SECONDS = 0.25
"""... and at most one per this many seconds (4 per second), before ``OPEN_JITTER``."""


def outage_probe_seconds(open_seconds: float, slice_rate: float | None, share: float) -> float:
    """How long a circuit stays open after a failed probe while a downstream stays down.

    ``1 / (share x slice_rate)`` — the replica's probes are ``share`` of what it may send —
    but never shorter than :data:`MIN_PROBE_SECONDS` nor longer than ``open_seconds`` (a
    small slice probes as it did before: once per open period). ``slice_rate`` ``None`` (no
    rate limit: nothing says what a flood is) keeps ``open_seconds``.
    """
    if slice_rate is None or slice_rate <= 0:
        return open_seconds
    return min(open_seconds, max(MIN_PROBE_SECONDS, 1.0 / (share * slice_rate)))


class Result(enum.StrEnum):
    """What became of a permitted request, as far as the limiter cares."""

    OK = "ok"
    """Accepted: closes a half-open circuit, grows the concurrency limit when saturated."""
    REJECTED = "rejected"
    """A permanent refusal (4xx) from a healthy downstream: counts as alive, no growth."""
    THROTTLED = "throttled"
    """429 / REQUEST_LIMIT_EXCEEDED: shrink concurrency and rate; the server is alive."""
    OVERLOADED = "overloaded"
    """503 / timeout: shrink concurrency and rate, and count as a circuit failure."""
    FAILED = "failed"
    """Other 5xx, connection errors: a circuit failure only."""
    CANCELLED = "cancelled"
    """Abandoned before an answer: no signal either way."""
    UNUSED = "unused"
    """Granted but never sent (the event's admission said no): the token is given back."""
    REFUSED = "refused"
    """Our credential was refused (401/403/407): the sink cannot work at all, so the circuit
    opens at once, whatever the failure count; only a probe (with re-read secrets) closes it."""


class CircuitState(enum.IntEnum):
    """Values match the ``fanout_sink_circuit_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class WaitReason(enum.StrEnum):
    PAUSED = "paused"
    CIRCUIT_OPEN = "circuit_open"
    PROBE_IN_FLIGHT = "probe_in_flight"
    CONCURRENCY = "concurrency"
    RATE = "rate"


@dataclasses.dataclass(frozen=True, slots=True)
class LimiterSettings:
    """One sink's limits; ``rate=None`` means only concurrency and the circuit apply."""

    rate: float | None = None
    """Fleet-wide requests per second (``rateLimit.requestsPerSecond``)."""
    burst: int = 1
    """Fleet-wide burst."""
    replicas: int = 1
    """How many replicas share ``rate`` (this replica's pace starts at ``rate / replicas``)."""
    replicas_known: bool = True
    """False when nobody said how many: the pace starts low and climbs (see ``pacing``)."""
    probe_share: float = pacing.PROBE_SHARE
    """Requests the fleet may spend on probes for unused grant (see ``pacing``)."""
    max_concurrency: int = 32
    initial_concurrency: int | None = None
    """Starting concurrency limit; default ``max_concurrency``."""
    failure_threshold: int = 5
    open_seconds: float = 5.0
    max_open_seconds: float = 60.0
    decrease_factor: float = 0.5
    """Multiplier for the concurrency limit on throttles in a row, a 503 or a timeout."""
    outage_probe_share: float | None = None
    """After a failed probe (not a refused credential), re-open for
    :func:`outage_probe_seconds` of the pace's slice instead of the doubled period; ``None``:
    the doubled period."""

    def __post_init__(self) -> None:
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.burst < 1 or self.max_concurrency < 1 or self.failure_threshold < 1 or self.replicas < 1:
            raise ValueError("burst, replicas, max_concurrency and failure_threshold must be >= 1")
        if self.open_seconds <= 0 or self.max_open_seconds < self.open_seconds:
            raise ValueError("need 0 < open_seconds <= max_open_seconds")
        if not 0 < self.decrease_factor < 1:
            raise ValueError("decrease_factor must be in (0, 1)")
        if self.outage_probe_share is not None and not 0 < self.outage_probe_share <= 1:
            raise ValueError("outage_probe_share must be in (0, 1]")


@dataclasses.dataclass(frozen=True, slots=True)
class Permit:
    """Leave to send one request; hand it back to :meth:`Limiter.release`."""

    serial: int
    issued_at: float
    probe: bool = False
    saturated: bool = False
    """Every concurrency slot was busy when it was granted (AIMD may grow)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """Not now: ask again after ``seconds`` (``inf``: after the next release)."""

    seconds: float
    reason: WaitReason


Decision = Permit | Wait


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What the telemetry gauges show."""

    rate: float | None
    """Requests per second this replica may send now (its pace x scale)."""
    concurrency: int
    in_flight: int
    paused: bool
    circuit: CircuitState


class Limiter:
    """The pure decision core. Not thread-safe; one event loop owns it."""

    def __init__(
        self, settings: LimiterSettings, now: float, *, random_source: Callable[[], float] = random.random
    ) -> None:
        self._settings = settings
        self._random = random_source
        self._pace = self._new_pace(settings.rate, settings.burst, now)
        self._tokens = min(1.0, self._capacity(now))
        self._refilled_at = now
        self._scale = 1.0
        self._pace_before_failures: pacing.Pace | None = None
        self._limit = float(
            min(settings.initial_concurrency or settings.max_concurrency, settings.max_concurrency)
        )
        self._limit = max(1.0, self._limit)
        self._in_flight = 0
        self._serial = 0
        self._paused_until = -math.inf
        self._decreased_after = 0
        self._reacted_after = 0
        """Serial of the last permit granted before the pace last reacted to a throttle."""
        """Serial of the last permit granted before the last decrease."""
        self._circuit = CircuitState.CLOSED
        self._failures = 0
        self._open_until = -math.inf
        self._open_for = settings.open_seconds
        self._probe_in_flight = False
        self._duration: float | None = None
        """Smoothed seconds from permit to answer (for :meth:`capacity`)."""

    # -- reading -----------------------------------------------------------------------

    @property
    def settings(self) -> LimiterSettings:
        return self._settings

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def concurrency_limit(self) -> int:
        """The current adaptive limit: ``floor`` of the AIMD value, in [1, scaled max]."""
        ceiling = max(1, math.floor(self._settings.max_concurrency * self._scale))
        return max(1, min(ceiling, math.floor(self._limit)))

    @property
    def pace(self) -> pacing.Pace | None:
        return self._pace

    def rate_bound_seconds(self, now: float) -> float:
        """Seconds in which requests waited for the rate (0 without a rate limit)."""
        return self._pace.rate_bound_seconds(now) if self._pace is not None else 0.0

    def effective_rate(self, now: float) -> float | None:
        self._refill(now)
        return self._effective_rate(now)

    def capacity(self, now: float) -> float | None:
        """Permits per second this replica makes room for: the geometric mean of its pace and
        its slice of the fleet's rate by the replica count, or what its concurrency limit
        allows at the answers' recent duration, whichever is less; ``None`` while neither
        bounds it (no rate limit and no answer yet).

        Not the pace alone: a replica's share of the fleet is measured from what it holds
        (:mod:`workers.fleet`), and a hold proportional to the pace feeds the share back into
        itself — any split is then where the shares stay, and reads a second late made them
        swing (a tenth of the requests refused in ``tests/test_pacing.py``'s fleets). Through
        the mean, a replica above its slice holds less than its pace and the shares settle
        towards the slices of the replicas that have work; a replica alone in a fleet whose
        count is three, sending at the whole rate, still holds more than a second of its
        slice (it refills from SQS three times less often than at its slice, not never).
        """
        rate = self._effective_rate(now)
        if rate is not None and self._pace is not None:
            rate = math.sqrt(rate * self._pace.settings.rate / self._pace.replicas * self._scale)
        if self._duration is not None and self._duration > 0:
            by_concurrency = self.concurrency_limit / self._duration
            rate = by_concurrency if rate is None else min(rate, by_concurrency)
        return rate

    def circuit(self, now: float) -> CircuitState:
        """OPEN turns HALF_OPEN (for reading) once its open period is over."""
        if self._circuit is CircuitState.OPEN and now >= self._open_until:
            return CircuitState.HALF_OPEN
        return self._circuit

    def paused(self, now: float) -> bool:
        return now < self._paused_until

    def accepting_in(self, now: float) -> float:
        """Seconds until new work should be taken (0: now). Paused or open → not accepting."""
        waits = [self._paused_until - now]
        if self._circuit is CircuitState.OPEN:
            waits.append(self._open_until - now)
        return max(0.0, *waits)

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(
            rate=self.effective_rate(now),
            concurrency=self.concurrency_limit,
            in_flight=self._in_flight,
            paused=self.paused(now),
            circuit=self.circuit(now),
        )

    # -- deciding ----------------------------------------------------------------------

    def try_acquire(self, now: float) -> Decision:
        """A permit, or how long to wait before asking again."""
        if now < self._paused_until:
            return Wait(self._paused_until - now, WaitReason.PAUSED)
        probe = False
        if self._circuit is CircuitState.OPEN:
            if now < self._open_until:
                return Wait(self._open_until - now, WaitReason.CIRCUIT_OPEN)
            self._circuit = CircuitState.HALF_OPEN
        if self._circuit is CircuitState.HALF_OPEN:
            if self._probe_in_flight:
                return Wait(math.inf, WaitReason.PROBE_IN_FLIGHT)
            probe = True
        limit = self.concurrency_limit
        if self._in_flight >= limit:
            return Wait(math.inf, WaitReason.CONCURRENCY)
        self._refill(now)
        rate = self._effective_rate(now)
        # A hair of tolerance: float refills land on 0.9999999...; a wait that short
        # would not even move a float clock forward.
        if rate is not None and self._tokens < 1.0 - _TOKEN_EPSILON:
            if self._pace is not None:
                self._pace.wanted(now)
            return Wait(max((1.0 - self._tokens) / rate, _TOKEN_EPSILON), WaitReason.RATE)
        if rate is not None:
            self._tokens -= 1.0
        self._in_flight += 1
        self._serial += 1
        self._probe_in_flight = self._probe_in_flight or probe
        return Permit(self._serial, now, probe=probe, saturated=self._in_flight >= limit)

    def release(
        self, permit: Permit, result: Result, now: float, *, retry_after: float | None = None
    ) -> None:
        """Hand a permit back with what happened; ``retry_after`` pauses the whole sink
        (unless it is short and the throttle isolated: then the limiter skips a beat)."""
        self._in_flight = max(0, self._in_flight - 1)
        if result is Result.UNUSED and self._pace is not None:
            self._refill(now)
            self._tokens = min(self._capacity(now), self._tokens + 1.0)
        if result not in (Result.CANCELLED, Result.UNUSED, Result.REFUSED):
            took = max(0.0, now - permit.issued_at)
            self._duration = took if self._duration is None else 0.8 * self._duration + 0.2 * took
        excess = True
        if result in (Result.THROTTLED, Result.OVERLOADED) and self._circuit is CircuitState.CLOSED:
            if result is Result.OVERLOADED and self._failures == 0 and self._pace is not None:
                # perhaps the first answer of an outage: remember the pace it must not cost
                self._pace_before_failures = copy.copy(self._pace)
            excess = self._throttled(permit, now)
        elif result is Result.OK:
            if self._pace is not None:
                self._pace.accepted(now)
            if permit.saturated:
                self._limit = min(float(self._settings.max_concurrency), self._limit + 1.0 / self._limit)
        if retry_after is not None and retry_after > 0:
            if excess or retry_after > SHORT_RETRY_AFTER:
                self.pause_until(now + retry_after, now)
            else:
                self._skip_beat(now)
        self._update_circuit(permit, result, now)

    def pause_until(self, until: float, now: float) -> None:
        """Stop granting until ``until``; resume at the rate, without a burst."""
        if until <= self._paused_until:
            return
        self._refill(now)
        self._paused_until = until
        self._tokens = min(self._tokens, 0.0)
        self._refilled_at = max(self._refilled_at, until)

    def set_rate(self, rate: float | None, now: float, burst: int | None = None) -> None:
        """A new fleet-wide limit (``None``: no rate limit); this replica keeps its share of it."""
        self._refill(now)
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0")
        if burst is not None and burst < 1:
            raise ValueError("burst must be >= 1")
        if rate is None or self._pace is None:
            self._pace = self._new_pace(rate, burst or self._settings.burst, now)
        else:
            self._pace.set_limit(rate, burst or self._pace.settings.burst, now)
        self._tokens = min(self._tokens, self._capacity(now))

    def set_replicas(self, replicas: int, now: float) -> None:
        """The replica count sharing the fleet-wide rate changed."""
        self._refill(now)
        if self._pace is not None:
            self._pace.set_replicas(replicas, now)
            self._tokens = min(self._tokens, self._capacity(now))

    def set_share(self, share: float | None, now: float) -> None:
        """This replica's measured share of what the fleet holds (see ``pacing``)."""
        self._refill(now)
        if self._pace is not None:
            self._pace.observe_share(share, now)
            self._tokens = min(self._tokens, self._capacity(now))

    def set_scale(self, scale: float, now: float) -> None:
        """An external brake in (0, 1] (e.g. a CRM's daily API usage): scales rate and concurrency."""
        self._refill(now)
        self._scale = min(1.0, max(1e-3, scale))

    # -- internals ---------------------------------------------------------------------

    def _new_pace(self, rate: float | None, burst: int, now: float) -> pacing.Pace | None:
        if rate is None:
            return None
        settings = pacing.PaceSettings(rate=rate, burst=burst, probe_share=self._settings.probe_share)
        return pacing.Pace(settings, self._settings.replicas, now, known=self._settings.replicas_known)

    def _capacity(self, now: float) -> float:
        return self._pace.bucket(now) if self._pace is not None else float(self._settings.burst)

    def _effective_rate(self, now: float) -> float | None:
        if self._pace is None:
            return None
        return self._pace.rate(now) * self._scale

    def _refill(self, now: float) -> None:
        elapsed = now - self._refilled_at
        if elapsed <= 0:
            return
        rate = self._effective_rate(now)
        if rate is not None:
            self._tokens = min(self._capacity(now), self._tokens + elapsed * rate)
        self._refilled_at = now

    def _throttled(self, permit: Permit, now: float) -> bool:
        """The downstream refused for its rate or load; True when that was excess."""
        self._refill(now)
        if self._pace is not None and permit.serial <= self._reacted_after:
            self._pace.echoed(now)  # sent before the pace reacted: the same news again
            return False
        self._reacted_after = self._serial
        excess = self._pace.throttled(now) if self._pace is not None else True
        # One decrease per window: answers to requests sent before the last decrease
        # describe the old limit and must not shrink it again.
        if excess and permit.serial > self._decreased_after:
            self._limit = max(1.0, self._limit * self._settings.decrease_factor)
            self._decreased_after = self._serial
        return excess

    def _skip_beat(self, now: float) -> None:
        """After an isolated short throttle: send nothing for one interval of the pace."""
        self._refill(now)
        self._tokens = min(self._tokens, 0.0)

    def _update_circuit(self, permit: Permit, result: Result, now: float) -> None:
        failure = result in (Result.OVERLOADED, Result.FAILED, Result.REFUSED)
        if permit.probe:
            self._probe_in_flight = False
            if result in (Result.CANCELLED, Result.UNUSED):
                return
            if failure:
                self._open_for = self._reopen_for(result)
                self._open(now)
            else:
                self._circuit = CircuitState.CLOSED
                self._failures = 0
                self._open_for = self._settings.open_seconds
                if self._pace is not None:
                    self._pace.thaw(now)
            return
        if self._circuit is not CircuitState.CLOSED:
            return  # only the probe decides while open or half-open
        if result is Result.REFUSED:
            self._open(now)
        elif failure:
            self._failures += 1
            if self._failures >= self._settings.failure_threshold:
                self._open(now)
        elif result in (Result.OK, Result.REJECTED):
            self._failures = 0
            self._pace_before_failures = None

    def _reopen_for(self, result: Result) -> float:
        """The open period after a failed probe (see the module docstring)."""
        settings = self._settings
        doubled = min(settings.max_open_seconds, self._open_for * 2)
        if settings.outage_probe_share is None or result is Result.REFUSED:
            return doubled
        slice_rate = self._pace.slice * self._scale if self._pace is not None else None
        return outage_probe_seconds(settings.open_seconds, slice_rate, settings.outage_probe_share)

    def _open(self, now: float) -> None:
        self._circuit = CircuitState.OPEN
        self._open_until = now + self._open_for * (1.0 + OPEN_JITTER * self._random())
        self._failures = 0
        if self._pace is not None:
            if self._pace_before_failures is not None:
                self._pace = self._pace_before_failures
                self._pace_before_failures = None
            self._pace.freeze(now)


class AsyncLimiter:
    """The async face of a :class:`Limiter`: sinks ``await acquire()`` and ``release()``.

    ``clock`` must tick with the event loop's sleeps; the default is the running loop's
    ``time()`` (so fake-time test loops work). ``on_change`` receives a :class:`Snapshot`
    whenever what the gauges show (rate, concurrency limit, paused, circuit) differs from the
    last one it received — checked after every acquire, release and setting, so not for
    ``in_flight`` alone (the sink feeds it to its telemetry gauges; twice per request would
    cost more than the request's own bookkeeping).
    """

    def __init__(
        self,
        settings: LimiterSettings,
        *,
        clock: Clock | None = None,
        on_change: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self._clock: Clock = clock or _loop_time
        self._core = Limiter(settings, self._clock())
        self._on_change = on_change
        self._published: tuple[float | None, int, bool, CircuitState] | None = None
        self._lock = asyncio.Lock()
        self._changed: asyncio.Event = asyncio.Event()
        self._waiting = 0  # tasks in _wait: only they need the changed event set

    @property
    def core(self) -> Limiter:
        return self._core

    def now(self) -> float:
        return self._clock()

    @property
    def accepting(self) -> bool:
        return self._core.accepting_in(self._clock()) == 0.0

    async def wait_accepting(self) -> None:
        while (delay := self._core.accepting_in(self._clock())) > 0:
            await self._wait(delay)

    async def acquire(self) -> Permit:
        """Wait (fairly, first come first served) for a permit."""
        async with self._lock:
            while True:
                decision = self._core.try_acquire(self._clock())
                if isinstance(decision, Permit):
                    self._publish()
                    return decision
                await self._wait(decision.seconds)

    def release(self, permit: Permit, result: Result, *, retry_after: float | None = None) -> None:
        self._core.release(permit, result, self._clock(), retry_after=retry_after)
        self._notify()

    def slot(self) -> _SlotContext:
        """``async with limiter.slot() as slot: ...; slot.report(result)``.

        A body that raises or is cancelled releases the permit as CANCELLED.
        """
        return _SlotContext(self)

    def set_rate(self, rate: float | None, burst: int | None = None) -> None:
        self._core.set_rate(rate, self._clock(), burst)
        self._notify()

    def set_replicas(self, replicas: int) -> None:
        self._core.set_replicas(replicas, self._clock())
        self._notify()

    def set_share(self, share: float | None) -> None:
        self._core.set_share(share, self._clock())
        self._notify()

    def capacity(self) -> float | None:
        """Permits per second this limiter can grant now (see :meth:`Limiter.capacity`)."""
        return self._core.capacity(self._clock())

    def rate_bound_seconds(self) -> float:
        return self._core.rate_bound_seconds(self._clock())

    def set_scale(self, scale: float) -> None:
        self._core.set_scale(scale, self._clock())
        self._notify()

    def snapshot(self) -> Snapshot:
        return self._core.snapshot(self._clock())

    def _publish(self) -> None:
        if self._on_change is None:
            return
        core, now = self._core, self._clock()
        shown = (core.effective_rate(now), core.concurrency_limit, core.paused(now), core.circuit(now))
        if shown != self._published:
            self._published = shown
            self._on_change(core.snapshot(now))

    def _notify(self) -> None:
        if self._waiting:
            self._changed.set()
            self._changed = asyncio.Event()
        self._publish()

    async def _wait(self, seconds: float) -> None:
        changed = self._changed
        timeout = None if math.isinf(seconds) else max(seconds, 0.0)
        self._waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        finally:
            self._waiting -= 1


class _SlotContext:
    """What :meth:`AsyncLimiter.slot` returns (a class: it runs twice per request)."""

    __slots__ = ("_limiter", "_slot")

    def __init__(self, limiter: AsyncLimiter) -> None:
        self._limiter = limiter
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        self._slot = Slot(await self._limiter.acquire())
        return self._slot

    async def __aexit__(self, *exc: object) -> None:
        slot = self._slot
        assert slot is not None
        self._limiter.release(slot.permit, slot.result, retry_after=slot.retry_after)


@dataclasses.dataclass(slots=True)
class Slot:
    """A permit being used; the body sets what happened."""

    permit: Permit
    result: Result = Result.CANCELLED
    retry_after: float | None = None

    def report(self, result: Result, *, retry_after: float | None = None) -> None:
        self.result = result
        self.retry_after = retry_after


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # built before the loop runs: the default loop's clock is monotonic
        return time.monotonic()
