"""How long to wait after failures in a row: the one capped exponential backoff.

Every loop that tries again after a failure of something that is not a message — an SQS or
DynamoDB call, a crashed task, the operator's queue reads, the front door waiting for
another replica's claim — and the worker's retry schedule for a message
(``workers.retrying``) take their pauses from :func:`exponential`, so "1 s, 2 s, 4 s ...
capped" is written once. Pure: numbers in, a number out; callers add jitter where they
want it.
"""

from __future__ import annotations

import math


def exponential(failures: int, *, base: float, cap: float) -> float:
    """``base * 2**(failures-1)``, at most ``cap``: the pause after the ``failures``-th failure
    in a row (``failures`` below 1 counts as 1, so the first pause is ``base``)."""
    try:
        step = math.ldexp(base, max(failures, 1) - 1)
    except OverflowError:  # far past any cap
        return cap
    return min(step, cap)
