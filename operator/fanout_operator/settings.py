"""The operator's settings: one frozen value, built once from the command line, passed to kopf.

``cli`` parses ``fanout-operator``'s flags (and the few environment variables the chart sets)
into :class:`OperatorSettings` and hands it to kopf as ``memo.settings``; ``handlers`` reads it
from there and passes the parts each module needs. Nothing reads the environment or a module
global after start-up, so a test builds the settings it wants and runs the operator with them.

Pure: no I/O, no kopf. The defaults here are the documented ones.
"""

from __future__ import annotations

import dataclasses
import enum

from fanout_operator import guardrails, rendering

DEFAULT_PEERING_NAME = "fanout-operator"
# kopf's own default: a peer not heard from for this long is presumed dead and replaced.
DEFAULT_PEERING_LIFETIME_SECONDS = 60
DEFAULT_LIVENESS = "http://0.0.0.0:8081/healthz"
DEFAULT_METRICS_ADDRESS = "0.0.0.0"
DEFAULT_METRICS_PORT = 8082  # next to kopf's liveness port
DEFAULT_RESYNC_SECONDS = 60.0
DEFAULT_TOPOLOGY_SECONDS = 300.0
DEFAULT_RETRY_SECONDS = 10.0


class PeeringMode(enum.StrEnum):
    """How operator replicas coordinate (kopf peering)."""

    # No --peering flag: peer through the default object, creating it when missing; when that
    # is impossible (no CRD, not allowed), run standalone and say so in one warning line.
    AUTO = "auto"
    # --peering NAME: the object must exist or be creatable; never run unsupervised next to a
    # peer (the chart's replicas), so a missing object is an error, repeated until fixed.
    REQUIRED = "required"
    # --standalone: no peering at all.
    STANDALONE = "standalone"


@dataclasses.dataclass(frozen=True)
class Peering:
    mode: PeeringMode = PeeringMode.AUTO
    name: str = DEFAULT_PEERING_NAME
    # None: chosen at start-up, older process first (``peering.default_priority``).
    priority: int | None = None
    lifetime_seconds: int = DEFAULT_PEERING_LIFETIME_SECONDS


@dataclasses.dataclass(frozen=True)
class MetricsEndpoint:
    host: str = DEFAULT_METRICS_ADDRESS
    port: int = DEFAULT_METRICS_PORT


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator is told at start-up."""

    # Watched namespaces; empty = every namespace.
    namespaces: tuple[str, ...] = ()
    peering: Peering = dataclasses.field(default_factory=Peering)
    # Who this process is (kopf's peer identity, Events' reportingInstance, the User-Agent).
    identity: str = "fanout-operator"
    liveness: str | None = DEFAULT_LIVENESS
    # None: no /metrics endpoint.
    metrics: MetricsEndpoint | None = dataclasses.field(default_factory=MetricsEndpoint)
    workers: rendering.Defaults = dataclasses.field(default_factory=rendering.Defaults)
    guardrails: guardrails.Guardrails = dataclasses.field(default_factory=guardrails.Guardrails)
    # Read the workers' /metrics (sink throttling, measured throughput).
    scrape_workers: bool = True
    # How often every child is compared with what the spec renders, and repaired.
    resync_seconds: float = DEFAULT_RESYNC_SECONDS
    # How often every consumer's AWS topology is checked (and, with spec.topology.manage,
    # provisioned); a spec change checks at once.
    topology_seconds: float = DEFAULT_TOPOLOGY_SECONDS
    # Delay before a handler that hit a Kubernetes error runs again.
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    verbose: bool = False
    debug: bool = False

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
