"""The latency estimator: moments, fits, spreading over the grid, quantiles, windows."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hiw_monitor.analysis.latency import (
    LogNormal,
    Moments,
    PointMass,
    RollingWindow,
    ScaledBeta,
    fit,
    log_grid,
    quantile,
    regularized_beta,
    spread,
)

GRID = log_grid(extra=(0.1,))
means = st.floats(min_value=1e-4, max_value=10.0)
cvs = st.floats(min_value=0.0, max_value=5.0)


def estimate(dist, calls: float, q: float) -> float:
    counts = [0.0] * len(GRID)
    spread(dist, calls, GRID, counts)
    return quantile(GRID, counts, calls, q)


@given(mean=means, cv=cvs, calls=st.integers(min_value=1, max_value=10**6))
def test_bucket_counts_sum_to_the_calls(mean, cv, calls):
    dist = fit(mean, (cv * mean) ** 2)
    counts = [0.0] * len(GRID)
    spread(dist, calls, GRID, counts)
    assume(dist.hi < GRID[-1])
    assert counts[-1] == pytest.approx(calls, rel=1e-9)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(counts))  # cumulative


@given(mean=means, cv=st.floats(min_value=0.01, max_value=3.0),
       qs=st.lists(st.floats(min_value=0.01, max_value=0.999), min_size=2, max_size=6))
def test_quantiles_are_monotone_in_q(mean, cv, qs):
    dist = fit(mean, (cv * mean) ** 2)
    values = [estimate(dist, 1000, q) for q in sorted(qs)]
    assert values == sorted(values)


@given(latency=st.floats(min_value=2e-5, max_value=500.0), calls=st.integers(1, 10**5))
def test_constant_latency_yields_that_latency(latency, calls):
    moments = Moments.from_stats(calls, calls * latency, 0.0)
    mean, var = moments.mean_var()
    dist = fit(mean, var, lo=latency, hi=latency, lifetime_calls=calls)
    for q in (0.5, 0.95, 0.99):
        # exact up to the grid's resolution (2 % per step)
        assert estimate(dist, calls, q) == pytest.approx(latency, rel=0.021)


@given(calls=st.integers(1, 10**6), mean=means, sd=st.floats(0, 10))
def test_moments_round_trip_through_stddev(calls, mean, sd):
    moments = Moments.from_stats(calls, calls * mean, sd)
    got_mean, got_var = moments.mean_var()
    assert got_mean == pytest.approx(mean, rel=1e-9)
    # the variance is exact to ~1e-15 relative; its square root amplifies that near zero
    assert math.sqrt(got_var) == pytest.approx(sd, rel=1e-6, abs=1e-6 * mean)


def test_interval_moments_are_exact_from_cumulative_stats():
    rng = random.Random(7)
    before = [rng.uniform(0.001, 0.05) for _ in range(300)]
    during = [rng.uniform(0.2, 0.4) for _ in range(200)]

    def stats(xs):
        n = len(xs)
        mean = sum(xs) / n
        return Moments.from_stats(n, sum(xs), math.sqrt(sum((x - mean) ** 2 for x in xs) / n))

    interval = stats(before + during).minus(stats(before))
    mean, var = interval.mean_var()
    true_mean = sum(during) / len(during)
    assert mean == pytest.approx(true_mean, rel=1e-9)
    assert var == pytest.approx(sum((x - true_mean) ** 2 for x in during) / len(during),
                                rel=1e-6)


def test_lognormal_fit_matches_its_moments():
    dist = LogNormal.from_mean_var(0.05, 0.0004)
    assert math.exp(dist.mu + dist.sigma**2 / 2) == pytest.approx(0.05)
    assert (math.exp(dist.sigma**2) - 1) * math.exp(2 * dist.mu + dist.sigma**2) == \
        pytest.approx(0.0004)


@pytest.mark.parametrize(("x", "a", "b", "expected"), [
    (0.5, 2.0, 3.0, 0.6875),      # I_0.5(2,3) = 11/16
    (0.2, 0.5, 0.5, 2 / math.pi * math.asin(math.sqrt(0.2))),  # arcsine law
    (0.9, 5.0, 1.0, 0.9**5),
])
def test_regularized_beta_known_values(x, a, b, expected):
    assert regularized_beta(x, a, b) == pytest.approx(expected, rel=1e-10)


def test_uniform_latencies_fit_a_bounded_shape():
    rng = random.Random(3)
    xs = [rng.uniform(0.0, 0.2) for _ in range(5000)]
    n = len(xs)
    mean = sum(xs) / n
    var = sum(x * x for x in xs) / n - mean * mean
    dist = fit(mean, var, lo=min(xs), hi=max(xs), lifetime_calls=n)
    assert isinstance(dist, ScaledBeta)
    truth = sorted(xs)[int(0.95 * n)]
    assert estimate(dist, n, 0.95) == pytest.approx(truth, rel=0.03)


def test_lognormal_latencies_keep_the_lognormal():
    rng = random.Random(5)
    xs = [math.exp(rng.gauss(math.log(0.02), 0.8)) for _ in range(5000)]
    n = len(xs)
    mean = sum(xs) / n
    var = sum(x * x for x in xs) / n - mean * mean
    dist = fit(mean, var, lo=min(xs), hi=max(xs), lifetime_calls=n)
    assert isinstance(dist, LogNormal)
    truth = sorted(xs)[int(0.95 * n)]
    assert estimate(dist, n, 0.95) == pytest.approx(truth, rel=0.05)


def test_zero_variance_is_a_point_mass():
    assert fit(0.05, 0.0) == PointMass(0.05)


def test_quantile_of_nothing_is_nan():
    assert math.isnan(quantile(GRID, [0.0] * len(GRID), 0.0, 0.95))


@settings(max_examples=50)
@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 100)), min_size=1, max_size=20),
       st.floats(min_value=1, max_value=500))
def test_window_keeps_only_recent_entries(entries, seconds):
    window = RollingWindow(seconds, 1)
    now = 0.0
    for step, calls in entries:
        now += step
        window.add(now, [calls], calls, calls)
    _, calls, _ = window.totals()
    expected = 0.0
    t = 0.0
    times = []
    for step, c in entries:
        t += step
        times.append((t, c))
    expected = sum(c for when, c in times if when > now - seconds)
    assert calls == pytest.approx(expected)


@settings(max_examples=100)
@given(st.lists(st.lists(st.floats(0, 50), min_size=6, max_size=6), min_size=1, max_size=8))
def test_window_compaction_loses_nothing(increments):
    window = RollingWindow(1000.0, 6)
    expected = [0.0] * 6
    for when, steps in enumerate(increments):
        cumulative, running = [], 0.0
        for step in [*steps[:-2], 0.0, 0.0]:  # flat tails are what gets compacted
            running += step
            cumulative.append(running)
        window.add(float(when), cumulative, running, running)
        expected = [a + b for a, b in zip(expected, cumulative, strict=True)]
    counts, _, _ = window.totals()
    assert counts == pytest.approx(expected)


def _fast_with_outliers(rng, body_sigma):
    def draw():
        if rng.random() < 0.007:  # a run queue, a lock, a cold page
            return math.exp(rng.uniform(math.log(0.5e-3), math.log(8e-3)))
        return 0.057e-3 * math.exp(rng.gauss(0, body_sigma))
    return draw


def test_a_tight_body_with_rare_outliers_is_not_smeared_into_one_wide_lognormal():
    """57 us statements with 0.7 % outliers of 0.5-8 ms: the two moments alone give a
    lognormal whose p95 is 2-3x the truth; the body-and-outliers shape stays near it."""
    import random

    from hiw_monitor.analysis.latency import GridAccumulator, log_grid, quantile

    grid = log_grid(1e-6, 1e3)
    for seed in range(3):
        for body_sigma in (0.15, 0.2):
            draw = _fast_with_outliers(random.Random(seed), body_sigma)
            lifetime = [draw() for _ in range(6000)]
            calls = sorted(draw() for _ in range(1500))
            n = len(calls)
            mean = sum(calls) / n
            var = sum(x * x for x in calls) / n - mean * mean
            truth = calls[int(0.95 * n)]
            estimates = {}
            for outliers in (False, True):
                dist = fit(mean, var, lo=min(lifetime + calls), hi=max(lifetime + calls),
                           lifetime_calls=7500, outliers=outliers)
                accumulator = GridAccumulator(grid)
                accumulator.add(dist, n)
                estimates[outliers] = quantile(grid, accumulator.finish(), n, 0.95)
            assert estimates[False] > 2 * truth  # the plain two-moment fit
            assert abs(estimates[True] - truth) <= 0.35 * truth, (seed, body_sigma, estimates)
