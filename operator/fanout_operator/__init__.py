"""fanout_operator: the kopf operator that runs and scales FanoutConsumer worker fleets.

Modules by layer, top to bottom (an import-linter contract keeps them so; a module imports only
from the layers below it):

- ``cli``: ``fanout-operator``; flags and environment → one ``settings.OperatorSettings``, kopf
  started with it in ``memo``.
- ``handlers``: thin kopf handlers: start-up (peering, shared clients), create / update / resume,
  and two daemons per FanoutConsumer.
- ``autoscaling`` (the scaling loop: observe, decide, scale, report) and ``resyncing`` (drift
  repair of the children on a timer).
- ``reporting`` (the one status writer, and its Events), ``peering`` (kopf peering objects made
  sure of at start-up), ``metrics`` (the operator's /metrics), ``workers_state`` (what the
  workers' /metrics say about the sink).
- ``reconciling`` (children created and repaired, the fleet scaled) and ``queues`` (SQS depth).
- ``kube``: a small Kubernetes API client.
- pure decisions: ``settings``, ``conditions`` (outcome → status and Events), ``scaling``
  (observations → replicas and a reason), ``ownership`` (which fields of a child are ours, and
  the patch that puts them back), ``crd`` (the CRD from the spec model), ``rbac`` (the
  permissions, as data), ``looping`` (the daemons' loop).
- ``guardrails``: what a spec may ask the operator to run (the admin's limits).
- ``rendering`` (spec → ConfigMap / Deployment / ServiceAccount / PodDisruptionBudget) and
  ``status`` (the status model).
"""
