"""Per-statement latency distributions from pg_stat_statements moments, and their sum.

pg_stat_statements keeps, per statement, ``calls``, ``total_exec_time`` and
``stddev_exec_time`` (the population standard deviation, from Welford's M2). So the sum
of squares is ``calls * (stddev**2 + mean**2)``, and between two polls the deltas of
calls, sum and sum of squares give the exact mean and variance of the calls made in the
interval. The shape inside those two moments is unknown; this module fits one:

* a point mass when the variance is (numerically) zero;
* a **lognormal** with the interval's mean and variance (latencies are positive and
  right-skewed; a lognormal matched on two moments is the usual model and is exact when
  the latencies are themselves lognormal);
* a **Beta on [min, max]** when the lognormal is contradicted by the statement's observed
  extremes: ``min_exec_time``/``max_exec_time`` bound every call ever made, so when the
  lognormal puts clearly more mass beyond ``max`` (or below ``min``) than the number of
  calls allows, the latencies are bounded (e.g. ``pg_sleep(random() * 0.2)`` is uniform)
  and a Beta matched on the same two moments over the observed range fits far better
  (it is exactly uniform for uniform data).

Limits (see docs/accuracy.md for measurements): one statement with a multi-modal latency
(the same SQL sometimes waiting on a lock) is smoothed into one unimodal shape; min and
max are cumulative, so an old outlier widens the Beta's range; times are server-side
execution only (no network, no parse/plan unless ``track_planning``).

Everything here is pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

SQRT2 = math.sqrt(2.0)
_NORMAL = NormalDist()
# Relative variance below which a statement is treated as constant latency.
CONSTANT_CV2 = 1e-10
# How much more lognormal mass beyond an observed extreme we tolerate, in expected calls.
BOUND_SLACK_CALLS = 10.0


@dataclass(frozen=True, slots=True)
class Moments:
    """Cumulative moments of one statement, in seconds: count, sum, sum of squares."""

    calls: float
    total: float
    sumsq: float

    @classmethod
    def from_stats(cls, calls: float, total: float, stddev: float) -> Moments:
        """From pg_stat_statements' calls, total and population stddev (same time unit).

        >>> Moments.from_stats(4, 8.0, 1.0)
        Moments(calls=4, total=8.0, sumsq=20.0)
        """
        mean = total / calls if calls else 0.0
        return cls(calls, total, calls * (stddev * stddev + mean * mean))

    def minus(self, earlier: Moments) -> Moments:
        return Moments(self.calls - earlier.calls, self.total - earlier.total,
                       self.sumsq - earlier.sumsq)

    def mean_var(self) -> tuple[float, float]:
        """(mean, variance) of the calls these moments describe; variance clamped >= 0.

        >>> Moments(4, 8.0, 20.0).mean_var()
        (2.0, 1.0)
        """
        if self.calls <= 0:
            return 0.0, 0.0
        mean = self.total / self.calls
        return mean, max(0.0, self.sumsq / self.calls - mean * mean)


# --- distributions ------------------------------------------------------------------------


class Dist(Protocol):
    """A latency distribution: ``cdf`` and the range outside which it is 0 or 1."""

    @property
    def lo(self) -> float: ...

    @property
    def hi(self) -> float: ...

    def cdf(self, x: float) -> float: ...


@dataclass(frozen=True, slots=True)
class PointMass:
    at: float

    @property
    def lo(self) -> float:
        return self.at

    @property
    def hi(self) -> float:
        return self.at

    def cdf(self, x: float) -> float:
        return 1.0 if x >= self.at else 0.0


@dataclass(frozen=True, slots=True)
class LogNormal:
    """``shift + exp(N(mu, sigma^2))``: a lognormal, optionally starting at ``shift``."""

    mu: float
    sigma: float
    shift: float = 0.0

    @classmethod
    def from_mean_var(cls, mean: float, var: float, shift: float = 0.0) -> LogNormal:
        """The (shifted) lognormal with this mean and variance.

        >>> d = LogNormal.from_mean_var(1.0, 0.5)
        >>> round(math.exp(d.mu + d.sigma**2 / 2), 9)
        1.0
        """
        excess = mean - shift
        sigma2 = math.log1p(var / (excess * excess))
        return cls(math.log(excess) - sigma2 / 2, math.sqrt(sigma2), shift)

    @property
    def lo(self) -> float:
        return self.shift + math.exp(self.mu - 6 * self.sigma)

    @property
    def hi(self) -> float:
        return self.shift + math.exp(self.mu + 6 * self.sigma)

    def cdf(self, x: float) -> float:
        if x <= self.shift:
            return 0.0
        return 0.5 * math.erfc(-(math.log(x - self.shift) - self.mu) / (self.sigma * SQRT2))


@dataclass(frozen=True, slots=True)
class ScaledBeta:
    a: float
    b: float
    lo: float
    hi: float

    @classmethod
    def from_mean_var(cls, mean: float, var: float, lo: float, hi: float) -> ScaledBeta | None:
        """The Beta on [lo, hi] with this mean and variance; None when none exists.

        >>> d = ScaledBeta.from_mean_var(0.5, 1 / 12, 0.0, 1.0)  # the uniform distribution
        >>> round(d.a, 9), round(d.b, 9), round(d.cdf(0.25), 9)
        (1.0, 1.0, 0.25)
        """
        width = hi - lo
        if width <= 0 or not lo < mean < hi:
            return None
        t = (mean - lo) / width
        s2 = var / (width * width)
        common = t * (1 - t) / s2 - 1 if s2 > 0 else 0.0
        if common <= TWO_POINT_CONCENTRATION:
            return None
        return cls(t * common, (1 - t) * common, lo, hi)

    def cdf(self, x: float) -> float:
        if x <= self.lo:
            return 0.0
        if x >= self.hi:
            return 1.0
        return regularized_beta((x - self.lo) / (self.hi - self.lo), self.a, self.b)


@dataclass(frozen=True, slots=True)
class TwoPoint:
    """Calls at ``lo`` and ``hi`` only, a share ``upper`` of them at ``hi``: the shape when
    the variance is (nearly) the largest any distribution on [lo, hi] with this mean can
    have, ``(mean - lo) * (hi - mean)``, e.g. one statement whose calls are either fast
    or wait the same long time. No Beta exists there; this is its limit.

    >>> d = TwoPoint.from_mean(16.8, 2.0, 150.0)  # 90 calls at 2, 10 at 150
    >>> round(d.upper, 9), d.cdf(100.0), d.cdf(150.0)
    (0.1, 0.9, 1.0)
    """

    lo: float
    hi: float
    upper: float

    @classmethod
    def from_mean(cls, mean: float, lo: float, hi: float) -> TwoPoint:
        return cls(lo, hi, min(1.0, max(0.0, (mean - lo) / (hi - lo))))

    def cdf(self, x: float) -> float:
        if x < self.lo:
            return 0.0
        return 1.0 if x >= self.hi else 1.0 - self.upper


# Beta shapes with a + b below this are U-shaped so sharply that a two-point shape is the
# same to within the grid's resolution (and the Beta's own continued fraction converges
# poorly there).
TWO_POINT_CONCENTRATION = 0.05


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the Beta CDF, by Lentz's continued fraction.

    >>> round(regularized_beta(0.3, 1, 1), 12), round(regularized_beta(0.5, 2, 2), 12)
    (0.3, 0.5)
    """
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
                          -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-13:
            break
    return result


@dataclass(frozen=True, slots=True)
class Mixture:
    """A body and a share ``weight`` of outliers, each its own distribution."""

    body: Dist
    outliers: Dist
    weight: float

    @property
    def lo(self) -> float:
        return min(self.body.lo, self.outliers.lo)

    @property
    def hi(self) -> float:
        return max(self.body.hi, self.outliers.hi)

    def cdf(self, x: float) -> float:
        return (1.0 - self.weight) * self.body.cdf(x) + self.weight * self.outliers.cdf(x)


# The tight-body-with-outliers shape: the body's log-dispersion and the outliers' (a prior:
# two moments and the extremes leave one degree of freedom, see body_and_outliers).
BODY_SIGMA = 0.25
BODY_SHARE = 0.8  # of the widest body the interval's mean allows, when that is tighter
SEPARATION = 10.0  # outliers' median / body's median: below, the tail is no outlier set
OUTLIER_SIGMA = 1.0
# The outlier shape is considered when the plain lognormal expects the fastest of the
# statement's calls this many times below the fastest actually seen.
MIN_CONTRADICTION = 4.0


def expected_min_z(n: float) -> float:
    """How many standard deviations below the mean the smallest of ``n`` normal draws lies
    on average (Blom's approximation).

    >>> round(expected_min_z(1000), 2)
    3.23
    """
    if n <= 1:
        return 0.0
    return -_NORMAL.inv_cdf(0.625 / (n + 0.25))


def body_and_outliers(mean: float, var: float, lo: float, hi: float,
                      lifetime_calls: float) -> Mixture | None:
    """A tight lognormal body starting near ``lo`` plus rare, wide outliers, with the
    interval's mean and variance; None when no such shape has them.

    Statements of a busy server are often fast and steady with rare outliers (a CPU run
    queue, a lock, a cold page): the outliers carry nearly all of the variance, and a
    lognormal matched on the two moments is far wider than the body, so it puts the body's
    calls well above where they are. Here the body's dispersion (``BODY_SIGMA``) and the
    outliers' (``OUTLIER_SIGMA``) are fixed (the body's is narrowed when the mean leaves
    no room for it); the body's median is where its fastest of
    ``lifetime_calls`` calls is expected to be ``lo``; the outliers' share and median
    follow from the mean and variance.

    >>> d = body_and_outliers(0.094e-3, 0.131e-6, 0.028e-3, 6.8e-3, 7500)
    >>> round(d.body.cdf(0.1e-3), 2), round(d.weight, 4)
    (0.92, 0.009)
    """
    z = expected_min_z(lifetime_calls)
    if mean <= lo:
        return None
    # the widest body whose mean stays below the interval's: z s + s^2 / 2 = ln(mean / lo)
    widest = -z + math.sqrt(z * z + 2.0 * math.log(mean / lo))
    sigma = min(BODY_SIGMA, BODY_SHARE * widest)
    median = lo * math.exp(z * sigma)
    body = LogNormal(math.log(median), sigma)
    body_mean = median * math.exp(sigma**2 / 2)
    body_square = body_mean * body_mean * math.exp(sigma**2)
    excess = mean - body_mean  # p * (E[outlier] - body mean)
    excess_square = var + mean * mean - body_square  # p * (E[outlier^2] - body 2nd moment)
    if excess <= 0 or excess_square <= 0:
        return None
    # outliers lognormal(mu, s): E[X^2] / E[X] = exp(mu + 1.5 s^2) ~ excess_square / excess
    # (exact when the body's moments are small beside the outliers': checked below)
    ratio = excess_square / excess
    mu = math.log(ratio) - 1.5 * OUTLIER_SIGMA**2
    outliers = LogNormal(mu, OUTLIER_SIGMA)
    outlier_mean = math.exp(mu + OUTLIER_SIGMA**2 / 2)
    if mu - math.log(median) < math.log(SEPARATION):
        return None  # outliers near the body: a heavy tail (e.g. Pareto), not this shape
    weight = excess / (outlier_mean - body_mean)
    if not 0 < weight < 0.5:
        return None
    return Mixture(body, outliers, weight)


def fit(mean: float, var: float, lo: float = 0.0, hi: float = math.inf,
        lifetime_calls: float = 0.0, *, outliers: bool = True) -> Dist:
    """The distribution this module uses for one statement in one interval.

    ``lo``/``hi`` are the statement's observed min/max (over ``lifetime_calls`` calls).

    >>> fit(0.05, 0.0)
    PointMass(at=0.05)
    >>> type(fit(0.1, 0.1**2 / 3, lo=0.0, hi=0.2, lifetime_calls=1000)).__name__
    'ScaledBeta'
    >>> type(fit(0.1, 0.01, lo=0.001, hi=5.0, lifetime_calls=1000)).__name__
    'LogNormal'
    >>> type(fit(0.0168, 0.0148 * 0.1332, lo=0.002, hi=0.15, lifetime_calls=100)).__name__
    'TwoPoint'
    """
    if mean <= 0:
        return PointMass(max(mean, 0.0))
    if var <= CONSTANT_CV2 * mean * mean:
        return PointMass(mean)
    lognormal = LogNormal.from_mean_var(mean, var)
    if lifetime_calls <= 0 or not math.isfinite(hi) or not lo < mean < hi:
        return lognormal
    slack = BOUND_SLACK_CALLS / lifetime_calls
    if var >= (1.0 - TWO_POINT_CONCENTRATION) * (mean - lo) * (hi - mean):
        return TwoPoint.from_mean(mean, lo, hi)  # only the extremes can carry this variance
    if 1.0 - lognormal.cdf(hi) > slack:  # too little tail for a lognormal: bounded
        bounded = ScaledBeta.from_mean_var(mean, var, lo, hi)
        if bounded is not None:
            return bounded
    if outliers and lo > 0 and lognormal.lo < lo and math.exp(
            lognormal.mu - expected_min_z(lifetime_calls) * lognormal.sigma) * \
            MIN_CONTRADICTION < lo:
        # far wider than any call ever seen below the mean: a tight body with outliers?
        mixture = body_and_outliers(mean, var, lo, hi, lifetime_calls)
        if mixture is not None:
            return mixture
    if lognormal.cdf(lo) > slack:  # mass below the fastest call ever: starts at lo
        shifted = LogNormal.from_mean_var(mean, var, shift=lo)
        if 1.0 - shifted.cdf(hi) <= slack:
            return shifted
        bounded = ScaledBeta.from_mean_var(mean, var, lo, hi)
        if bounded is not None:
            return bounded
    return lognormal


def known_calls(calls: float, lo: float, hi: float, previous: tuple[float, float] | None,
                fresh: bool) -> list[float]:
    """Latencies of individual calls of the interval that the extremes reveal exactly.

    ``lo``/``hi`` are the statement's min/max now, ``previous`` those of the last poll. A
    max that rose means one call of the interval took exactly the new max (likewise a min
    that fell); for an entry created within the interval (``fresh``) its min and max are
    calls of the interval. Taking those calls out of the moments before fitting keeps a
    rare outlier from widening the whole fitted shape, and puts it where it really was.

    >>> known_calls(100, 0.001, 0.5, previous=(0.001, 0.2), fresh=False)
    [0.5]
    >>> known_calls(100, 0.0005, 0.2, previous=(0.001, 0.2), fresh=False)
    [0.0005]
    >>> known_calls(5, 0.001, 0.3, previous=None, fresh=True)
    [0.3, 0.001]
    >>> known_calls(1, 0.001, 0.3, previous=None, fresh=True)
    [0.3]
    """
    atoms: list[float] = []
    if fresh:
        atoms = [hi, lo] if lo < hi else [hi]
    elif previous is not None:
        if hi > previous[1]:
            atoms.append(hi)
        if lo < previous[0]:
            atoms.append(lo)
    return atoms[: max(0, int(calls))]


# --- histograms on a fixed grid -----------------------------------------------------------


def log_grid(lo: float = 1e-5, hi: float = 1e3, ratio: float = 1.02,
             extra: Iterable[float] = ()) -> tuple[float, ...]:
    """Upper bounds spaced by ``ratio`` from ``lo`` to ``hi``, plus ``extra`` bounds.

    >>> g = log_grid(1.0, 2.0, 1.5, extra=[1.75])
    >>> [round(x, 4) for x in g]
    [1.0, 1.5, 1.75, 2.0]
    """
    steps = math.ceil(math.log(hi / lo) / math.log(ratio))
    points = {lo * ratio**i for i in range(steps)} | {hi} | set(extra)
    return tuple(sorted(p for p in points if lo <= p <= hi))


def spread(dist: Dist, calls: float, bounds: Sequence[float], into: list[float]) -> None:
    """Add ``calls`` calls of ``dist`` to the cumulative counts ``into[i]`` (<= bounds[i]).

    Only the bounds inside the distribution's range are evaluated.
    """
    accumulator = GridAccumulator(bounds)
    accumulator.add(dist, calls)
    for i, value in enumerate(accumulator.finish()):
        into[i] += value


class GridAccumulator:
    """Sums many distributions' cumulative counts on one grid cheaply: each adds its CDF
    only inside its own range, and its full count once, as a step, above it."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0.0] * len(bounds)
        self._steps = [0.0] * (len(bounds) + 1)

    def add(self, dist: Dist, calls: float) -> None:
        bounds = self.bounds
        start = bisect.bisect_left(bounds, dist.lo)
        stop = min(bisect.bisect_right(bounds, dist.hi) + 1, len(bounds))
        counts, cdf = self.counts, dist.cdf
        for i in range(start, stop):
            counts[i] += calls * cdf(bounds[i])
        self._steps[stop] += calls

    def finish(self) -> list[float]:
        """The cumulative counts at every bound."""
        running = 0.0
        out = self.counts
        for i in range(len(out)):
            running += self._steps[i]
            out[i] += running
        return out


def quantile(bounds: Sequence[float], cumulative: Sequence[float], total: float,
             q: float) -> float:
    """The q-quantile of a cumulative histogram, interpolated log-linearly in a bucket.

    ``total`` is the number of calls (calls above the last bound count past it).

    >>> quantile([1.0, 2.0, 4.0], [0.0, 50.0, 100.0], 100.0, 0.5)
    2.0
    >>> round(quantile([1.0, 2.0, 4.0], [0.0, 50.0, 100.0], 100.0, 0.75), 4)
    2.8284
    """
    if total <= 0:
        return math.nan
    target = q * total
    index = bisect.bisect_left(cumulative, target)
    if index >= len(bounds):
        return bounds[-1]
    if index == 0:
        return bounds[0]
    below, above = cumulative[index - 1], cumulative[index]
    if above <= below:
        return bounds[index]
    fraction = (target - below) / (above - below)
    lo, hi = bounds[index - 1], bounds[index]
    return lo * math.exp(math.log(hi / lo) * fraction)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One collection's cumulative counts, stored compactly: zero below ``start``, the
    ``values`` from ``start``, and constant (the last value) from ``start + len(values)``.
    A 5-minute window at 1 s intervals then holds a few kB per entry, not the grid."""

    at: float
    start: int
    values: array[float]
    calls: float
    total: float


class RollingWindow:
    """Cumulative grid counts of the last ``seconds``: one entry per collection."""

    def __init__(self, seconds: float, size: int) -> None:
        self.seconds = seconds
        self.size = size
        self._entries: deque[_Entry] = deque()

    def add(self, now: float, cumulative: Sequence[float], calls: float,
            total_time: float) -> None:
        start = next((i for i, v in enumerate(cumulative) if v > 0), len(cumulative))
        stop = len(cumulative)
        if start < stop:
            last = cumulative[-1]
            while stop - 1 > start and cumulative[stop - 2] == last:
                stop -= 1
        self._entries.append(_Entry(now, start, array("d", cumulative[start:stop]), calls,
                                    total_time))
        while self._entries and self._entries[0].at <= now - self.seconds:
            self._entries.popleft()

    def totals(self) -> tuple[list[float], float, float]:
        """(cumulative counts, calls, total time) summed over the window."""
        counts = [0.0] * self.size
        steps = [0.0] * (self.size + 1)
        calls = total = 0.0
        for entry in self._entries:
            for offset, value in enumerate(entry.values):
                counts[entry.start + offset] += value
            if entry.values:
                steps[entry.start + len(entry.values)] += entry.values[-1]
            calls += entry.calls
            total += entry.total
        running = 0.0
        for i in range(self.size):
            running += steps[i]
            counts[i] += running
        return counts, calls, total
