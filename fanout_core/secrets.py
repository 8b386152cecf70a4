"""Secrets named by a spec: the sinks' tokens and signing keys, the front door's webhook secrets.

A spec never holds a secret, only a :class:`~fanout_core.spec.SecretRef` naming an
environment variable or a mounted file. :class:`Secret` resolves it when first asked and
again on :meth:`Secret.refresh` (a CRM sink refreshes after a 401: a rotated Kubernetes
Secret shows up in the mounted file without a restart). The value never appears in a
``repr``, a ``str``, an exception or a log line: errors name where the secret was looked
for, and only :meth:`Secret.reveal` hands the value out, at the point of use. Shared by the
worker (``workers.sinks``) and the front door (``fanout_ingest.credentials``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fanout_core import spec


class SecretError(spec.ConfigError):
    """A secret could not be read; the message names the field and the source, never a value.

    A :class:`~fanout_core.spec.ConfigError`: a worker or gateway whose secret is missing at
    start-up exits 2 like any other unusable manifest.
    """


class Secret:
    """A lazily read, refreshable secret."""

    def __init__(
        self, ref: spec.SecretRef, *, field: str = "secret", environ: Mapping[str, str] | None = None
    ) -> None:
        self._ref = ref
        self._field = field
        self._environ = environ
        self._value: str | None = None

    @property
    def source(self) -> str:
        """Where the secret comes from, fit for a log line: ``env:NAME`` or ``file:PATH``."""
        return f"env:{self._ref.env}" if self._ref.env is not None else f"file:{self._ref.file}"

    def reveal(self) -> str:
        """The value (read on first use); raises SecretError when missing or empty."""
        if self._value is None:
            self._value = self._read()
        return self._value

    def refresh(self) -> str:
        """Read again (after a rotation) and return the new value."""
        self._value = self._read()
        return self._value

    def _read(self) -> str:
        if self._ref.env is not None:
            environ = os.environ if self._environ is None else self._environ
            value = environ.get(self._ref.env)
            if value is None:
                raise SecretError(f"{self._field} ({self.source}): environment variable not set")
        else:
            assert self._ref.file is not None  # SecretRef validates exactly one
            try:
                with open(self._ref.file, encoding="utf-8") as handle:
                    value = handle.read()
            except OSError as error:
                raise SecretError(f"{self._field} ({self.source}): cannot read ({error.strerror})") from None
            value = value.strip("\r\n")
        if not value:
            raise SecretError(f"{self._field} ({self.source}): empty")
        return value

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__


def optional(
    ref: spec.SecretRef | None, *, field: str = "secret", environ: Mapping[str, str] | None = None
) -> Secret | None:
    """A :class:`Secret` for ``ref``, or None when the spec names none."""
    return None if ref is None else Secret(ref, field=field, environ=environ)
