"""The scaling simulator of bench/scaling.py on a short trace: it runs, and it compares fairly."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "scaling.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scaling", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scaling"] = module
    spec.loader.exec_module(module)
    return module


def test_hourly_profile_has_the_seed_average_and_peak(bench: ModuleType) -> None:
    rates = bench.hourly_rates(6.0, 3.0)
    assert sum(rates) / 24 == pytest.approx(6.0)
    assert max(rates) == pytest.approx(18.0)


def test_day_trace_is_seeded_and_has_the_incident(bench: ModuleType) -> None:
    first = bench.day_trace(seed=3, seconds=17 * 3600)
    assert first == bench.day_trace(seed=3, seconds=17 * 3600)
    incident = first[16 * 3600 + 30 * 60 : 16 * 3600 + 50 * 60]
    assert sum(incident) / len(incident) == pytest.approx(60, abs=1)


def test_short_trace_comparison(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = bench.Fleet()
    arrivals = bench.short_trace()
    keda, fanout, fanout_same_target = bench.compare(arrivals, fleet)
    print(bench.report([keda, fanout, fanout_same_target], fleet))
    for result in (keda, fanout, fanout_same_target):
        assert result.delivered == result.arrived == sum(arrivals)  # nobody loses events
        assert result.replica_minutes > 0
        assert result.worst_backlog_age > 0  # the incident outruns the sink for everyone
    # KEDA scales on depth alone past what the sink can use; the fanout policy never does.
    assert keda.peak_replicas > fleet.useful_replicas
    assert fanout.peak_replicas <= fleet.useful_replicas
    assert fanout.minutes_over_sink_cap == 0
    assert "replica-minutes" in capsys.readouterr().out


def test_simulator_counts_replica_minutes_exactly(bench: ModuleType) -> None:
    class Fixed:
        name = "fixed"

        def step(self, now: int, observation: object) -> int | None:
            return 3 if now == 0 else None

    result = bench.simulate([1] * 600, Fixed(), bench.Fleet())
    assert result.replica_minutes == pytest.approx(30.0)
    assert result.peak_replicas == 3
