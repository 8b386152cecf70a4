"""The small core shared by the worker, the operator and the ``fanout`` tool.

spec        the FanoutConsumer spec model: the single source of truth for the resource
awserrors   what an AWS error code means (throttled, credentials, denied, ...)
"""
