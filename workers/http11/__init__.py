"""Our HTTP/1.1 client: one connection (:mod:`workers.http11.connection`, an asyncio ``Protocol``
feeding ``httptools``) and the per-origin keep-alive pool (:mod:`workers.http11.pool`).

A package of its own, below both of its users, because two layers send through it: the
sinks (:mod:`workers.sinks.transport` puts httpx's API on it) and the three hot SQS calls
(:mod:`workers.sqswire`, which translates its errors into botocore's). It speaks bytes:
a request as it goes on the wire in, the answer's status, reason, raw header fields and
body out; its errors are the httpx exceptions httpx's own transport would raise.
"""
