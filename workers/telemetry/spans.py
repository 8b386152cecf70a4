"""Span context managers for the recorders that never raise into the data path.

:class:`Guarded` wraps a recording span (the SDK's): a failure starting or ending it is
counted in ``fanout_telemetry_errors_total`` and logged by type only, and the work goes on
under the current (non-recording) span. While nothing records spans the recorders skip it:
:func:`current` is what the no-op API's ``start_as_current_span`` amounts to, and
:class:`Carried` the process "span", which makes the producer's context current so log lines
and the downstream ``traceparent`` carry the producer's trace.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import types
from collections.abc import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from workers import events, messages
from workers.telemetry import metrics as _metrics
from workers.telemetry import tracing

_log = logging.getLogger(__name__)


def failed(owner: object, what: str, error: BaseException) -> None:
    """Count and note a failure inside telemetry; never raises itself."""
    try:
        families = getattr(owner, "metrics", None)
        if isinstance(families, _metrics.WorkerMetrics):
            families.telemetry_errors.labels(str(getattr(owner, "queue", "") or "-")).inc()
        _log.warning("telemetry call failed; ignored", extra={"call": what, "error": type(error).__name__})
    except Exception:  # the last line of defence must not raise either
        return


class Guarded(contextlib.AbstractContextManager[Span]):
    """A span context that falls back to the current (non-recording) span when telemetry fails."""

    __slots__ = ("_inner", "_make", "_owner")

    def __init__(self, owner: object, make: Callable[[], contextlib.AbstractContextManager[Span]]) -> None:
        self._owner = owner
        self._make = make
        self._inner: contextlib.AbstractContextManager[Span] | None = None

    def __enter__(self) -> Span:
        try:
            inner = self._make()
            span = inner.__enter__()
        except Exception as error:
            failed(self._owner, "span", error)
            return trace.INVALID_SPAN
        self._inner = inner
        return span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        inner, self._inner = self._inner, None
        if inner is None:
            return
        try:
            inner.__exit__(kind, error, traceback)
        except Exception as failure:
            if failure is not error:
                failed(self._owner, "span", failure)


def current() -> contextlib.AbstractContextManager[Span]:
    """What the no-op API's ``start_as_current_span`` amounts to: the current context, as is
    (never raises: the invalid span if even that fails)."""
    try:
        span = trace.get_current_span()
        if not isinstance(span, trace.NonRecordingSpan):
            span = trace.NonRecordingSpan(span.get_span_context())
    except Exception as error:
        failed(None, "span", error)
        span = trace.INVALID_SPAN
    return contextlib.nullcontext(span)


class Carried(contextlib.AbstractContextManager[Span]):
    """The process "span" while nothing records: the producer's context (or none) made
    current for the message's work, as the no-op API would, in one small object per message
    (the generator context, the partial and the guard it replaces were ~2% of the CPU per
    event). A message that carries no producer context, handled where no span is current,
    leaves the context as it is: attaching the invalid span would change nothing a reader
    sees. Like :class:`Guarded`, a failure is counted and the work goes on."""

    __slots__ = ("_event", "_message", "_owner", "_token")

    def __init__(self, owner: object, message: messages.Message, event: events.Event | None) -> None:
        self._owner = owner
        self._message = message
        self._event = event
        self._token: contextvars.Token[otel_context.Context] | None = None

    def __enter__(self) -> Span:
        try:
            producers = tracing.producer_contexts(self._message, self._event)
            if not producers and trace.get_current_span() is trace.INVALID_SPAN:
                # Nothing to carry, and no span is current (the worker's usual case): the
                # current context already reads as the one attach would make current.
                return trace.INVALID_SPAN
            current = trace.NonRecordingSpan(producers[0]) if producers else trace.INVALID_SPAN
            self._token = otel_context.attach(trace.set_span_in_context(current))
        except Exception as error:
            failed(self._owner, "span", error)
            return trace.INVALID_SPAN
        return current

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        try:
            otel_context.detach(token)
        except Exception as failure:
            failed(self._owner, "span", failure)
