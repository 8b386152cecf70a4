"""fanout_operator: the kopf operator that runs and scales FanoutConsumer worker fleets.

Modules, read top to bottom: ``crd`` (the CustomResourceDefinition, generated from the spec
model), ``status`` (the status model), ``rendering`` (spec → ConfigMap / Deployment /
ServiceAccount / PodDisruptionBudget; pure), ``scaling`` (observations → desired replicas and a
reason; pure), ``queues`` (SQS depth), ``workers_state`` (what the workers' /metrics say about the
sink), ``kube`` (a small Kubernetes API client), ``reconciling`` and ``autoscaling`` (the I/O
around rendering and scaling), ``handlers`` (thin kopf handlers), ``rbac`` (the permissions all
of that needs, as data) and ``cli`` (``fanout-operator``).
"""
