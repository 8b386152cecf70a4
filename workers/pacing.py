"""This replica's pace: how many requests per second it sends of a rate limit the fleet shares.

``rateLimit`` is fleet-wide; every replica's :class:`Pace` takes its slice of it — its
share of the messages the fleet holds, as :mod:`workers.fleet` reads it from SQS, or
``rate / replicas`` before a read — and then follows what the downstream answers. Pure:
the caller (:class:`workers.throttling.Limiter`) passes ``now`` and reports what happened;
nothing here sleeps or sends. The replicas never talk to each other: what a replica learns
of the others is what the queue says they hold, and the downstream's 429s; the pace reads
both carefully and asks for 429s sparingly.

The rules, and why:

* **The slice follows the work** (:meth:`Pace.observe_share`). A read that this replica
  holds a larger part of what the fleet holds is room the others left (a replica gone,
  starting, idle, or a count that is too high): the pace takes it at once. A smaller part
  lowers it at once (a replica joined, or this one is at its tail). After excess throttles,
  a larger part waits until the downstream has been quiet for ``distrust_seconds``: the read
  disagrees with the downstream, which wins. A replica that starts, or held nothing, takes
  ``JOIN_SHARE`` of the count's slice until its first read, half a second after its first
  receive: meanwhile the others, which read every half second, send as if it were not
  there (a replica that joined a busy fleet at its whole slice cost the downstream a few
  429s), and a read at its first receive would say little (the fleet is still receiving).

* **A throttle says how much is too much.** The pace keeps a short memory (time constant
  ``memory_seconds``) of how many of its requests were accepted and how many throttled.
  When one is throttled, the share throttled, ``f``, says how far over the fleet is: the
  pace drops to ``rate x (1 - f)`` (at most half less per throttle: a few answers are a
  noisy measure). Replicas that together send twice the grant see half their requests
  refused and halve at once, instead of shaving a few percent per round trip while the
  downstream keeps refusing.
* **One reaction per round trip.** Requests sent before the pace reacted to a throttle
  describe the old pace: their throttles are counted (:meth:`Pace.echoed`) but change
  nothing more, as TCP halves its window once per round trip, not per lost packet (a
  replica catching up after a stall sends a few requests at once, and their 429s arrive
  together).
* **An isolated throttle is phase, not excess.** When the configured rate equals the
  downstream's real limit, our token bucket and the downstream's drift against each other
  and an occasional 429 is unavoidable (a late wake-up, two requests crossing on the
  wire): ``f`` is then a few percent, the pace dips by as much and is back within
  ``return_seconds``, and the limiter skips a beat instead of stopping the sink (see
  ``throttling``). Throttles are *excess* when they are a real share of what was sent
  (``f`` at least ``excess_share``, and more than one): the limiter then honours the whole
  Retry-After. Telling them apart by time alone (a second throttle within three seconds)
  paused one replica at the configured rate for a whole second every few seconds on a
  loaded machine, where phase drift is frequent.
* **Back quickly, beyond slowly, and only when wanted** (the shape of TCP CUBIC's window).
  After a throttle the pace climbs back towards the rate where it was throttled (its
  *peak*), fast at first and flattening as it gets there, within ``return_seconds``;
  then, if the peak is below its slice, on towards the slice slowly at first and faster
  the longer the downstream stays quiet. A throttle below the previous peak (the fleet
  has less room than before) sets the peak halfway down the drop. Only time in which
  requests waited for the pace counts (:meth:`Pace.wanted`): a replica with nothing to
  send does not talk itself up to a rate it never tried, and forgets what it borrowed
  (below) when it idles. A single replica throttled four times in a stall is back at
  its rate within two seconds; three replicas that each think they are alone settle at
  a third in a few throttles.
* **Borrow what nobody uses, on a budget.** Where the reads cannot say (SQS refuses the
  read; the others hold messages they cannot send) a slice nobody uses is invisible: the
  downstream says nothing while the fleet is under its limit. So a
  replica that has wanted more than its slice for ``probe seconds`` without a throttle
  *probes*: it borrows beyond its slice, a fifth of it at first, doubling every
  ``probe_doubling_seconds``. Once it has borrowed more than the downstream's whole
  burst without a throttle, the room was real: it keeps it and keeps growing (up to the
  fleet's rate). A throttle before that means the fleet was full: the probe costs one
  429 or a few (any replica's request may be the one that meets the empty bucket; the
  prober stops at its own), the pace goes back below its slice for a moment (to give the
  downstream's bucket back what the probe took), and the next probe waits twice as long.
  The first probe waits ``PROBE_COST x replicas / (probe_share x rate)`` seconds, so that
  a fleet that is full spends at most about ``probe_share`` of its requests on probes that
  find nothing: at 30 requests per second three replicas probe every 40 s at most, at
  300 every 4 s. ``replicas`` is the count, or one over the replica's measured share where
  that is more: each replica of a fleet that does not know its count counts itself as one,
  and probing as if alone, ten of them were refused 2-2.7% of their requests (the
  fake-clock fleet in ``tests/test_pacing.py``). The downstream's 429 is the only news of
  an unused slice; this is what listening for it costs.
* **Nobody said how many: start low.** When the replica count is not known (no file, no
  ``FANOUT_REPLICAS``) the pace starts at ``slow_start_share`` of the rate and grows by half
  every ``slow_start_seconds`` of wanting more, until the first throttle or the full rate: a
  fleet whose replicas each think they are alone learns the truth from a few throttles,
  not from a flood, and a replica that is alone reaches the rate within a couple of seconds.
  The first read of what the fleet holds ends the slow start at once, at the share read
  (it now knows its part, as a replica told the count does).
* **The burst is shared, and starts unspent.** Each replica may save up its part of the
  fleet's burst (its share of the rate; one token at least), but no more than
  ``CATCH_UP_SECONDS`` of its pace: a stall (a loaded node, CPU throttling) is made up,
  not lost, and the fleet's buckets together never hold more than the downstream's. Each
  starts with one token, so the fleet never spends the downstream's initial burst: its
  bucket keeps the slack that absorbs two buckets drifting in phase. (Starting full, the
  whole burst split among the replicas, left it one token of slack: one replica alone at
  the configured rate was throttled every few seconds.)
* **An outage is not a throttle.** While the circuit is open the pace is frozen; when it
  closes, the pace is what it was before the outage began.
"""

from __future__ import annotations

import dataclasses
import math

CATCH_UP_SECONDS = 0.5
"""A replica's bucket holds at most this long of its pace (plus the token it sends)."""
PROBE_SHARE = 0.01
"""Requests a full fleet spends on probes that find nothing, at most about (the default)."""
PROBE_COST = 4.0
"""Throttled requests a probe that finds nothing costs, about (measured in ``tests/test_pacing.py``)."""
JOIN_SHARE = 0.5
"""Told it holds nothing (at its start, and whenever it runs dry), a replica takes this much of
the count's slice until its next read: for up to a read interval the others send as if it were
not there. (At most for ``join_seconds`` of wanting more: without reads the count decides.)"""
MIN_SHARE = 0.001
"""The smallest measured share a pace takes (it stays above zero)."""
PRIOR_ACCEPTED = 4.0
"""Accepted requests assumed beside those counted when a throttle is isolated: one throttle
among the first requests (or after a quiet spell) is not read as "everything is refused"."""


def demand_share(held: float, held_now: int, fleet_in_flight: int, *, away: int = 0) -> float | None:
    """This replica's share of the messages the whole fleet holds.

    ``held`` is what this replica held lately (an average), ``held_now`` what it holds as
    ``fleet_in_flight`` (the queue's in-flight count: everyone's, this replica's included)
    was read; the others hold the rest. But a queue's in-flight count also holds what nobody
    holds: messages put back invisible for a while (a retry's backoff, an event being
    delivered elsewhere). ``away`` is this replica's part of those, counted as its own: if
    every replica does so the shares add up to one, where leaving them to "the others" made
    a fleet with 5% duplicate deliveries send at 0.8 of its rate. ``None`` while it holds
    nothing: it sends nothing, and has no demand to weigh.
    """
    if held <= 0:
        return None
    others = max(0, fleet_in_flight - held_now - away)
    return (held + away) / (held + away + others)


@dataclasses.dataclass(frozen=True, slots=True)
class PaceSettings:
    """The fleet's limit and how a replica's pace moves within it."""

    rate: float
    """Fleet-wide requests per second."""
    burst: int = 1
    """Fleet-wide burst."""
    memory_seconds: float = 2.0
    """Time constant of the accepted/throttled counts."""
    excess_share: float = 0.1
    """Share of recent requests refused from which throttles are excess, not phase."""
    dip: float = 0.95
    """A little lower still right after a throttle, so the downstream's bucket refills a little."""
    return_seconds: float = 2.0
    """Wanting-seconds to climb back to the peak (a cubic, flattening at the peak)."""
    growth_seconds: float = 10.0
    """Beyond its peak and below its slice, the pace grows by (t / growth_seconds)^2 / 2
    slices after t more seconds of wanting more (see :meth:`Pace.wanted`)."""
    wanted_gap: float = 0.5
    """After a request waited for the pace, the replica counts as wanting more this long."""
    forget_seconds: float = 2.0
    """Not wanting more for this long gives back what was borrowed beyond the slice."""
    floor_share: float = 0.02
    """The pace never drops below this share of the slice."""
    slow_start_share: float = 0.25
    slow_start_seconds: float = 0.5
    probe_share: float = PROBE_SHARE
    """Requests the fleet may spend on probes that find nothing (see the module docstring)."""
    probe_min_seconds: float = 2.0
    probe_max_seconds: float = 300.0
    probe_start_share: float = 0.2
    """A probe first borrows this share of the slice, then doubles it..."""
    probe_doubling_seconds: float = 1.0
    """... every this many seconds of wanting more."""
    probe_repay: float = 0.85
    """After a probe found nothing, the pace dips to this share of where it was."""
    join_seconds: float = 1.0
    """How long (wanting more) ``JOIN_SHARE`` lasts at most when no read comes."""
    distrust_seconds: float = 2.0
    """After excess throttles, a larger measured share does not raise the pace at once."""

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        if not 0 < self.dip <= 1 or not 0 < self.floor_share <= 1 or not 0 < self.probe_repay <= 1:
            raise ValueError("dip, probe_repay and floor_share must be in (0, 1]")
        seconds = (self.memory_seconds, self.return_seconds, self.growth_seconds)
        if min(*seconds, self.probe_doubling_seconds, self.slow_start_seconds) <= 0:
            raise ValueError("time constants must be > 0")
        if not 0 < self.probe_share <= 1 or self.probe_max_seconds < self.probe_min_seconds:
            raise ValueError("need 0 < probe_share <= 1 and probe_min_seconds <= probe_max_seconds")


@dataclasses.dataclass(slots=True)
class _Probe:
    """A probe under way: borrowing beyond ``base`` since ``started`` (wanting-seconds)."""

    base: float
    started: float
    borrowed: float = 0.0
    """Requests sent beyond ``base`` so far (the integral of the excess rate)."""
    proven: bool = False


class Pace:
    """One replica's send rate within a fleet-wide limit."""

    def __init__(self, settings: PaceSettings, replicas: int, now: float, *, known: bool = True) -> None:
        self._settings = settings
        self._replicas = max(1, replicas)
        self._share: float | None = None
        """This replica's share of what the fleet holds, as the pace takes it (:meth:`observe_share`)."""
        self._joining = False
        """No read since this replica was told it holds nothing: see ``JOIN_SHARE``."""
        self._join_ends = 0.0
        """... and no longer than until ``_rate_bound`` reaches this (no reads come at all)."""
        self._excess_at = -math.inf
        """When throttles were last excess (a real share of the requests refused)."""
        self._slow_start = not known
        self._rate = self.slice * (settings.slow_start_share if self._slow_start else 1.0)
        self._peak = self._rate
        """Where the pace returns to after a throttle (the rate it was throttled at)."""
        self._low = self._rate
        """The pace right after the last throttle."""
        self._moved_at = now
        self._frozen_at: float | None = None
        self._accepted = 0.0
        self._refused = 0.0
        self._counted_at = now
        self._wanted_at = -math.inf
        self._wanting = 0.0
        """Seconds spent wanting more than the pace since the last throttle (the growth clock)."""
        self._rate_bound = 0.0
        """Seconds spent wanting more than the pace, ever."""
        self._probe_every = self._first_probe()
        self._probe: _Probe | None = None

    @property
    def settings(self) -> PaceSettings:
        return self._settings

    @property
    def replicas(self) -> int:
        return self._replicas

    @property
    def slice(self) -> float:
        """Where this replica's pace starts and what it grows back to: ``rate x share``, its
        measured share of what the fleet holds, or ``rate / replicas`` before a measurement."""
        if self._share is not None:
            return self._settings.rate * self._share
        return self._settings.rate / self._replicas * (JOIN_SHARE if self._joining else 1.0)

    @property
    def share(self) -> float | None:
        return self._share

    @property
    def probing(self) -> bool:
        return self._probe is not None

    def rate_bound_seconds(self, now: float) -> float:
        """Seconds in which requests waited for the pace, since the start (what held it back
        was the downstream's grant, not the traffic)."""
        self._advance(now)
        return self._rate_bound

    @property
    def probe_every(self) -> float:
        """Wanting-seconds without a throttle before the next probe."""
        return self._probe_every

    def rate(self, now: float) -> float:
        """Requests per second now, in ``(0, fleet rate]``."""
        self._advance(now)
        return self._rate

    def bucket(self, now: float) -> float:
        """Tokens this replica may save up: its share of the burst (at least one), at most
        ``CATCH_UP_SECONDS`` of its pace more than one."""
        rate = self.rate(now)
        share = self._settings.burst * rate / self._settings.rate
        return min(max(1.0, share), 1.0 + rate * CATCH_UP_SECONDS)

    # -- what happened -----------------------------------------------------------------

    def wanted(self, now: float) -> None:
        """A request had to wait for the pace: demand exceeds it (growth counts from here)."""
        self._advance(now)
        self._wanted_at = now

    def accepted(self, now: float) -> None:
        """A request went through (counted towards the throttled share)."""
        self._count(now, refused=False)

    def echoed(self, now: float) -> None:
        """A throttle answering a request sent before the pace last reacted: the same news
        again (a burst meets an empty bucket all at once). Counted, not reacted to."""
        self._count(now, refused=True)

    def throttled(self, now: float) -> bool:
        """The downstream refused a request for its rate; True when that was excess (dense)."""
        self._advance(now)
        self._count(now, refused=True)
        settings = self._settings
        counted = self._accepted + self._refused
        dense = self._refused > 1.0 and self._refused >= settings.excess_share * counted
        if dense:
            self._excess_at = now
        probe, self._probe = self._probe, None
        self._slow_start = False
        self._wanting = 0.0
        if probe is not None and not probe.proven:
            # The fleet was full: back to where the probe began, a little below for a moment
            # (the downstream's bucket gets back what the probe took), and wait longer.
            self._probe_every = min(settings.probe_max_seconds, 2.0 * self._probe_every)
            self._peak = probe.base
            self._rate = self._low = max(self._floor(), probe.base * settings.probe_repay)
            return dense
        prior = 0.0 if dense else PRIOR_ACCEPTED
        refused_share = self._refused / (self._accepted + self._refused + prior)
        keep = max(0.5, 1.0 - refused_share)
        throttled_at = self._rate
        peak = throttled_at if throttled_at >= self._peak else throttled_at * (1.0 + keep) / 2.0
        self._peak = max(self._floor(), peak)
        self._rate = self._low = max(self._floor(), throttled_at * keep * settings.dip)
        return dense

    def set_replicas(self, replicas: int, now: float) -> None:
        """The count changed: fewer replicas raise the pace to the new slice at once, more
        lower it at once (both are the operator's word, and the downstream corrects it)."""
        self._advance(now)
        replicas = max(1, replicas)
        if replicas == self._replicas:
            return
        fewer = replicas < self._replicas
        self._replicas = replicas
        self._slow_start = False  # now somebody said
        self._probe = None
        self._probe_every = self._first_probe()
        self._wanting = 0.0
        self._rate = max(self._rate, self.slice) if fewer else min(self._rate, self.slice)
        self._peak = self._low = self._rate

    def observe_share(self, share: float | None, now: float) -> None:
        """This replica's share of the messages the fleet holds, as just read (``None``: it
        holds nothing, and until its next read after it holds something again, it takes
        ``JOIN_SHARE`` of the count's slice).

        A smaller share lowers the pace at once. A larger one raises it at once — room the
        others left — unless throttles were excess within ``distrust_seconds``: the read
        disagrees with the downstream, and the rise waits until the downstream has been quiet
        that long (meanwhile the pace climbs by its own rules, throttle by throttle)."""
        self._advance(now)
        before, previous, joining = self.slice, self._share, self._joining
        guessing = self._slow_start
        self._joining = share is None and self._settings.join_seconds > 0
        self._join_ends = self._rate_bound + self._settings.join_seconds
        if share is not None:
            share = min(1.0, max(MIN_SHARE, share))
            self._slow_start = False  # measured: no need to guess from below any more
        self._share = share
        if share is not None:
            # the fleet the share speaks of probes too: keep its probes to ``probe_share``
            self._probe_every = max(self._probe_every, self._first_probe())
        after = self.slice
        if after < before:
            self._rate = min(self._rate, after)
            self._peak = min(self._peak, after)
            self._low = min(self._low, self._rate)
        elif after > before:
            if now - self._excess_at <= self._settings.distrust_seconds:
                self._share, self._joining = previous, joining  # not yet: once the downstream was quiet
            elif after > self._rate:
                self._probe = None
                self._rate = self._peak = self._low = after
        if guessing and share is not None and self._rate < after:
            # the first read ends the slow start of a replica that did not know the count:
            # it now knows its part, as a replica told the count knows it from the start
            # (left to climb from the slow start's rate, three such replicas took 5-8 s to
            # reach their slices: 0.93 of the grant over 40 s in ``tests/test_pacing.py``)
            self._rate = self._peak = self._low = after

    def set_limit(self, rate: float, burst: int, now: float) -> None:
        """The fleet's limit itself changed: keep the pace's share of it."""
        self._advance(now)
        share = self._rate / self._settings.rate
        self._settings = dataclasses.replace(self._settings, rate=rate, burst=burst)
        self._probe = None
        self._probe_every = self._first_probe()
        self._rate = self._peak = self._low = min(rate, share * rate)

    def freeze(self, now: float) -> None:
        """The circuit opened (an outage): what the downstream says now is not about rate."""
        if self._frozen_at is None:
            self._advance(now)
            self._frozen_at = now

    def thaw(self, now: float) -> None:
        """The circuit closed: carry on from where the pace was when the outage began."""
        if self._frozen_at is not None:
            self._moved_at = now
            self._wanted_at = now
            self._counted_at = now
            self._frozen_at = None

    # -- internals ---------------------------------------------------------------------

    def _first_probe(self) -> float:
        settings = self._settings
        seconds = PROBE_COST * self._fleet_size() / (settings.probe_share * settings.rate)
        return min(settings.probe_max_seconds, max(settings.probe_min_seconds, seconds))

    def _fleet_size(self) -> float:
        """How many replicas probe, as far as this one can tell: the count, or one over its
        measured share where that says more (a count unknown, or stale after a scale-up)."""
        if self._share is None:
            return float(self._replicas)
        return max(float(self._replicas), 1.0 / self._share)

    def _floor(self) -> float:
        return self.slice * self._settings.floor_share

    def _count(self, now: float, *, refused: bool) -> None:
        elapsed = now - self._counted_at
        if elapsed > 0:
            keep = math.exp(-elapsed / self._settings.memory_seconds)
            self._accepted *= keep
            self._refused *= keep
            self._counted_at = now
        if refused:
            self._refused += 1.0
        else:
            self._accepted += 1.0

    def _advance(self, now: float) -> None:
        if self._frozen_at is not None or now <= self._moved_at:
            return
        settings = self._settings
        # Wanting lasts ``wanted_gap`` after the last request that waited for the pace.
        elapsed = max(0.0, min(now, self._wanted_at + settings.wanted_gap) - self._moved_at)
        wanting = now - self._wanted_at <= settings.wanted_gap
        idle = now - self._wanted_at > settings.forget_seconds
        self._moved_at = now
        self._wanting += elapsed
        self._rate_bound += elapsed
        if self._joining and self._rate_bound >= self._join_ends:
            self._joining = False  # no read came: the count alone decides
            if self._share is None and not self._slow_start:
                self._rate = self._peak = self._low = max(self._rate, self.slice)
        if self._slow_start:
            start = self.slice * settings.slow_start_share
            self._rate = min(self.slice, start * 1.5 ** (self._wanting / settings.slow_start_seconds))
            self._peak = self._low = self._rate
            self._slow_start = self._rate < self.slice
            return
        if self._probe is not None:
            if wanting:
                self._borrow(elapsed)
                return
            self._probe = None  # demand met: keep what was borrowed, until idle
        if idle and self._rate > self.slice:
            self._rate = self._peak = self._low = self.slice
        back = settings.return_seconds
        if self._wanting < back:
            self._rate = self._peak - (self._peak - self._low) * (1.0 - self._wanting / back) ** 3
            return
        if self._peak < self.slice:
            beyond = (self._wanting - back) / settings.growth_seconds
            self._rate = min(self.slice, self._peak + 0.5 * beyond**2 * self.slice)
            return
        self._rate = self._peak
        if wanting and self._wanting >= self._probe_every and self._rate < settings.rate:
            self._probe = _Probe(base=self._rate, started=self._wanting)

    def _borrow(self, elapsed: float) -> None:
        settings = self._settings
        probe = self._probe
        assert probe is not None
        doublings = (self._wanting - probe.started) / settings.probe_doubling_seconds
        excess = self.slice * settings.probe_start_share * (2.0**doublings - 1.0)
        self._rate = min(settings.rate, probe.base + excess)
        probe.borrowed += (self._rate - probe.base) * elapsed
        if not probe.proven and probe.borrowed > settings.burst:
            probe.proven = True  # more than any burst could have absorbed: the room is real
            self._probe_every = self._first_probe()
        self._peak = self._low = self._rate
