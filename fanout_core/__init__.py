"""The small core shared by the worker, the operator and the ``fanout`` tool.

spec        the FanoutConsumer spec model: the single source of truth for the resource
awserrors   what an AWS error code means (throttled, credentials, denied, ...)
deadletters dead letters as values: parse, select, keep FIFO groups in order, copy back, summarize
pacing      how fast a redrive goes: the default rate and a pacer on an injected clock
redrive_reports  a redrive's progress and report, as values
redriving   reading and redriving a dead-letter queue over SQS (the one I/O module here)
"""
