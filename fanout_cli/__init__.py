"""``fanout``: the user-facing tool that ships with the production distribution.

    main       the command line: built-in commands, plus commands other distributions plug in
    commands   the shape of a command, the plug-in entry-point group, what is missing and why
    validate   ``fanout validate FILE``: check a FanoutConsumer manifest as the worker loads it
    dlq        ``fanout dlq summary|show|redrive|export``: a consumer's dead-letter queue
    dlq_output what ``fanout dlq`` prints

``fanout-worker`` and ``fanout-operator`` are the workloads' own entry points and live with
them (``workers.cli``, ``fanout_operator.cli``); this package is what a person runs. It never
imports the lab (the stand-ins live in a separate distribution the image does not install):
the lab adds ``fanout demo`` through the ``fanout.commands`` entry-point group instead.
"""
