"""The lab: everything that stands in for the outside world or only serves demos, tests and
benchmarks. A distribution of its own (``fanout-lab``, ``lab/pyproject.toml``), installed in
the development environment beside ``fanout-consumer`` and never in the container image.

    simulators  an embedded AWS endpoint (moto's server) and the downstream API simulators
    demo        ``fanout demo``, plugged into the ``fanout`` tool through ``fanout.commands``
    harness     what the tests and the benchmarks share: queues, manifests, feeders, checks

Production packages (``workers``, ``fanout_operator``, ``fanout_core``, ``fanout_cli``) never
import this one; an import-linter contract in the root ``pyproject.toml`` holds them to it.
"""
