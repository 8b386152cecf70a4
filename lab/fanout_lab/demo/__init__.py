"""``fanout demo``: the whole fan-out pipeline on this machine, and a verdict on it.

The lab registers :data:`command.COMMAND` as ``demo`` in the ``fanout`` tool's plug-in
group (``fanout.commands``); ``fanout_cli`` parses the command line and calls it. The demo
needs no AWS account and no cluster: an embedded AWS endpoint (the moto server, a child
process), simulated CRM, Splunk HEC and webhook downstreams, and the real worker runtime
consuming three queues fed by one SNS topic with a compressed contact-center day. It
prints live progress, then a report, and exits 0 only when every invariant held. The day
ends with a redrive: events the CRM refused because a few of its records were duplicated go
back from the dead-letter queue once the duplicates are merged.

    command    the ``fanout demo`` command: its options, the run, the exit code
    session    one run: resources, simulators, workers, publishing, draining, judging
    stage      what a run stands on: clients, simulators, secrets, worker logs
    recovery   the CRM's duplicated records, and the redrive after the fix
    traffic    the day's publications (pure, seeded)
    consumers  the three consumers and their FanoutConsumer manifests
    referee    the invariants and the report's figures (pure)
    display    live progress (rich) and the report table
"""
