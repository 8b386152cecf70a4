"""The small core shared by the worker and the operator: the FanoutConsumer spec model."""
