"""The server-side rate limit every downstream simulator enforces.

The simulators are the referee the sinks' limiter is judged against, so this is a
deliberately *different* algorithm from :mod:`workers.throttling` (GCRA — a theoretical
arrival time instead of a token count): a bug in one is unlikely to hide in the other.
GCRA with emission interval ``1/rate`` and tolerance ``(burst - 1)/rate`` admits exactly
what a token bucket of capacity ``burst`` refilled at ``rate`` admits, starting full.

Pure: the caller passes ``now`` (seconds on any monotonic clock).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class Gcra:
    """``rate`` requests per second with ``burst`` allowed at once."""

    rate: float
    burst: int = 1
    _tat: float | None = dataclasses.field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")

    def take(self, now: float) -> float:
        """Admit one request: 0.0 when admitted, else the seconds until one would be."""
        interval = 1.0 / self.rate
        tolerance = (self.burst - 1) * interval
        tat = now if self._tat is None else max(self._tat, now)
        early = tat - now - tolerance
        if early > 1e-9:
            return early
        self._tat = tat + interval
        return 0.0

    def set_rate(self, rate: float, burst: int | None = None) -> None:
        """Change the limit; what was already admitted stays admitted."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        if burst is not None:
            if burst < 1:
                raise ValueError("burst must be >= 1")
            self.burst = burst
