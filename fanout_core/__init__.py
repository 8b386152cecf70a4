"""The small core shared by the worker, the operator and the ``fanout`` tool.

spec            the FanoutConsumer spec model: the single source of truth for the resource
awserrors       what an AWS error code means (throttled, credentials, denied, ...)
backoff         the pause after failures in a row: one capped exponential

The consumer's AWS topology (verified always, provisioned on request), pure rules first:

filterpolicies  spec.filter as an SNS filter policy, and what a policy lets through
policies        queue and KMS key policies: may SNS send, may SNS use the key
topology        the topology a spec asks for, and the typed snapshot of what AWS holds
findings        snapshot + spec -> one reason, consequence and fix per problem

and the I/O at the edge (the only modules here that reach aiobotocore):

awsclients      the clients, and where botocore's errors are translated
inspecting      read the topology (Get/List/Describe only)
provisioning    create or adopt it; delete what was created, when asked

Dead letters, pure rules first:

deadletters     dead letters as values: parse, select, keep FIFO groups in order, copy back, summarize
pacing          how fast a redrive goes: the default rate and a pacer on an injected clock
redrive_reports a redrive's progress and report, as values
redriving       reading and redriving a dead-letter queue over SQS (I/O)

Serving:

probing         /healthz, /readyz, /metrics and the listening socket, for every process
"""
