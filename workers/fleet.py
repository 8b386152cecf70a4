"""How many replicas share the fleet-wide rate limit, as this replica last heard.

``rateLimit`` in a FanoutConsumer is for the whole fleet; each replica's pace starts at
``rate / replicas`` (:mod:`workers.pacing`). The operator keeps the replica count in
the ``replicas`` key of the consumer's ConfigMap, mounted at ``FANOUT_REPLICAS_FILE``
(default ``/etc/fanout/replicas``); a replica count change is not a pod roll, so the file
is re-read while running — when its modification time changes, checked at most every
``check_interval`` seconds (a ``stat`` per check, no watch). Without the file the count
is ``FANOUT_REPLICAS``; without either it is 1 but *not known* (:meth:`Replicas.known`),
and the pace starts low and climbs (a fleet whose replicas each think they are alone must
not open with a flood). A stale count errs in a bounded way: the pace follows the
downstream's answers (too low a count costs a few throttles, never a flood).

Sinks call :meth:`ReplicaCount.current` before asking their limiter for a permit and
tell the limiter when the count changed. ``running`` builds one from the environment.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Protocol

log = logging.getLogger(__name__)

REPLICAS_FILE_ENV = "FANOUT_REPLICAS_FILE"
REPLICAS_ENV = "FANOUT_REPLICAS"
DEFAULT_REPLICAS_FILE = "/etc/fanout/replicas"
DEFAULT_CHECK_INTERVAL_SECONDS = 3.0


class Replicas(Protocol):
    """Anything that says how many replicas share the limit (>= 1)."""

    def current(self) -> int: ...

    def known(self) -> bool:
        """False when nobody said (the count is a guess of 1)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class FixedReplicas:
    """A count that never changes (tests, benchmarks, single processes)."""

    count: int = 1

    def current(self) -> int:
        return max(1, self.count)

    def known(self) -> bool:
        return True


class ReplicaCount:
    """The count from the operator's file, else a fallback; re-read when the file changes."""

    def __init__(
        self,
        *,
        path: str | os.PathLike[str] | None,
        fallback: int = 1,
        fallback_known: bool = True,
        check_interval: float = DEFAULT_CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = os.fspath(path) if path is not None else None
        self._fallback = max(1, fallback)
        self._fallback_known = fallback_known
        self._check_interval = check_interval
        self._clock = clock
        self._checked_at: float | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._count = self._fallback

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        check_interval: float = DEFAULT_CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> ReplicaCount:
        """``FANOUT_REPLICAS_FILE`` (default /etc/fanout/replicas), else ``FANOUT_REPLICAS``."""
        env = os.environ if environ is None else environ
        fallback = _parse(env.get(REPLICAS_ENV, ""), source=REPLICAS_ENV)
        return cls(
            path=env.get(REPLICAS_FILE_ENV) or DEFAULT_REPLICAS_FILE,
            fallback=fallback or 1,
            fallback_known=fallback is not None,
            check_interval=check_interval,
            clock=clock,
        )

    @property
    def path(self) -> str | None:
        return self._path

    def current(self) -> int:
        """The count, re-reading the file when due and changed."""
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self._check_interval:
            return self._count
        self._checked_at = now
        self._reload()
        return self._count

    def known(self) -> bool:
        """The count came from the file or ``FANOUT_REPLICAS``, not from nowhere."""
        self.current()
        return self._stamp is not None or self._fallback_known

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            status = os.stat(self._path)  # follows the ConfigMap's ..data symlink
        except OSError:
            if self._stamp is not None:
                log.warning("replicas file vanished; using the fallback", extra={"path": self._path})
            self._stamp = None
            self._count = self._fallback
            return
        stamp = (status.st_mtime_ns, status.st_ino, status.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            with open(self._path, encoding="utf-8") as handle:
                text = handle.read(64)
        except OSError:
            return
        count = _parse(text, source=self._path)
        if count is not None and count != self._count:
            log.info("replica count changed", extra={"replicas": count, "previous": self._count})
            self._count = count


def _parse(text: str, *, source: str) -> int | None:
    """A positive integer, or None (logged) for anything else; 0 counts as 1: we run."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        value = int(stripped)
    except ValueError:
        log.warning("replica count is not an integer; ignored", extra={"source": source})
        return None
    return max(1, value)
