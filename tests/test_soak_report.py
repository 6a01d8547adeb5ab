"""`choreo bench --soak`'s verdict and table: pure functions of samples, no Redis."""

from __future__ import annotations

from choreo.measure.soak import Sample, SoakPlan, SoakRun, slope, trend
from choreo.measure.soak_report import shown, verdict

PLAN = SoakPlan(orders=10_000, rate=50.0, retention_s=30, seen_ttl_s=60)


def samples(memory_of) -> list[Sample]:
    """A sample every 500 orders; memory_of(placed) -> bytes."""
    return [Sample(placed / 100, placed, placed, memory_of(placed), placed, 0)
            for placed in range(0, 10_001, 500)]


def run(memory_of) -> SoakRun:
    return SoakRun(PLAN, 50.0, None, "7.0", samples(memory_of), 10_000, ["audit clean: x"], True, [])


def test_slope_is_least_squares():
    assert slope([(0, 1), (1, 3), (2, 5)]) == 2
    assert slope([(1, 1), (1, 9)]) == 0 and slope([(1, 1)]) == 0


def test_growth_that_stops_at_half_way_is_flat():
    # 1 KB per order until 5,000 orders (the windows fill), then nothing.
    t = trend(samples(lambda n: min(n, 5000) * 1024), PLAN, 50.0)
    assert round(t.first_kb) == 1000 and round(t.second_kb) == 0 and t.flat and t.warm
    assert verdict(run(lambda n: min(n, 5000) * 1024)).startswith("memory: flat")


def test_steady_growth_is_reported_per_1000_orders():
    line = verdict(run(lambda n: n * 2048))
    assert line.startswith("memory: growing by 2,000.0 KB per 1000 orders")


def test_a_second_half_inside_the_retention_windows_says_so():
    short = SoakPlan(orders=10_000, rate=1000.0, retention_s=30, seen_ttl_s=60)
    assert not trend(samples(lambda n: n), short, 1000.0).warm
    r = run(lambda n: n)
    r.plan, r.rate = short, 1000.0
    assert "before the 60 s retention windows had passed" in verdict(r)


def test_too_few_samples_say_so():
    r = run(lambda n: n)
    r.samples = r.samples[:1]
    assert "too few samples" in verdict(r)


def test_the_table_shows_at_most_its_rows_first_and_last_included():
    many = samples(lambda n: n) * 3
    picked = shown(many, 24)
    assert len(picked) == 24 and picked[0] is many[0] and picked[-1] is many[-1]
    assert shown(many[:5], 24) == many[:5]
