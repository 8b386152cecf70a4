"""The secrets a source accepts right now, re-read when their files change.

A source names several secrets (``spec.sources[].secrets``) so that a rotation never
rejects valid traffic: add the new secret, move the sender to it, remove the old one. In
Kubernetes each is a key of a mounted Secret; the kubelet swaps the files in place when the
Secret changes, so :class:`AcceptedSecrets` looks at their ``stat`` at most once per
``recheck_seconds`` and re-reads the ones that changed. A file that disappears or becomes
empty stops being accepted (that is how a retired secret leaves), and one that appears is
accepted from then on (the chart mounts the keys ``current`` and ``previous`` of a Secret;
``previous`` exists only during a rotation). At start-up at least one secret must be
readable (else ``fanout_core.secrets.SecretError``: exit 2).

``serving`` calls :meth:`AcceptedSecrets.values` on every request: between checks it costs
one clock read.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from fanout_core import secrets, spec

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0

_Stamp = tuple[int, int, int] | None


def _stamp(path: str) -> _Stamp:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_mtime_ns, status.st_size)


class AcceptedSecrets:
    """The values of one source's secrets, kept current."""

    def __init__(
        self,
        refs: Sequence[spec.SecretRef],
        *,
        field: str,
        clock: Callable[[], float] = time.monotonic,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self._field = field
        self._clock = clock
        self._recheck_seconds = recheck_seconds
        self._secrets = [secrets.Secret(ref, field=f"{field}[{index}]") for index, ref in enumerate(refs)]
        self._paths = [ref.file for ref in refs]
        self._stamps: list[_Stamp] = [None if path is None else _stamp(path) for path in self._paths]
        self._current: list[bytes | None] = []
        problems = []
        for secret in self._secrets:
            try:
                self._current.append(secret.reveal().encode())
            except secrets.SecretError as error:
                self._current.append(None)
                problems.append(str(error))
        self._values = [value for value in self._current if value is not None]
        if not self._values:  # none at all is a configuration error; a missing rotation slot is not
            raise secrets.SecretError("\n".join(problems))
        for problem in problems:
            log.warning("secret not accepted for now: %s", problem)
        self._next_check = clock() + recheck_seconds

    def values(self) -> list[bytes]:
        """Every secret accepted now (file secrets as they are on disk, checked each second)."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._recheck_seconds
            self._check()
        return self._values

    def _check(self) -> None:
        changed = False
        for index, path in enumerate(self._paths):
            if path is None:
                continue
            stamp = _stamp(path)
            if stamp == self._stamps[index]:
                continue
            self._stamps[index] = stamp
            changed = True
            try:
                self._current[index] = self._secrets[index].refresh().encode()
                log.info("secret re-read", extra={"secret": self._secrets[index].source})
            except secrets.SecretError as error:
                self._current[index] = None
                log.warning("secret no longer accepted: %s", error)
        if changed:
            self._values = [value for value in self._current if value is not None]
            if not self._values:
                log.error("%s: no readable secret left; every request is refused (401)", self._field)
