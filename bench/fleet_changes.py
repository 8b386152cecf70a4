"""Replicas leaving and the downstream failing: scale in, a replica replaced, a full outage.

Goodput (unique events accepted / the grant over the whole busy period, tail included) and
the share of requests throttled, for the shipped worker and the naive per-instance
baseline in the same run; the harness, the scenarios and the options are in
``bench/_fleet.py``.

    .venv/bin/python bench/fleet_changes.py [--full] [--candidates] [--trace]
"""

import _fleet

if __name__ == "__main__":
    _fleet.main("fleet_changes")
