"""fanout-consumer's worker runtime.

The data path, one module per stage, read top to bottom::

    polling → envelopes → filtering → dedupe → ordering → throttling/sinks → settling

``running`` supervises the whole and ``telemetry`` owns every metric, span and log field.
"""
