"""Confidence intervals over seeds: a method's mean accuracy and its difference to a baseline.

Student's t interval of a mean, ``mean ± t_{n-1, (1+level)/2} · s / √n``, and Welch's interval of a
difference of two means, ``(m_a − m_b) ± t_ν · √(s_a²/n_a + s_b²/n_b)`` with the Welch–Satterthwaite
degrees of freedom ν (Welch 1947, https://doi.org/10.1093/biomet/34.1-2.28). With fewer than two
seeds on a side there is no interval: its half-width is ``None``, never zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Interval:
    """``mean`` ± ``half_width`` at ``level``; ``half_width`` is None when the seeds cannot give one."""

    mean: float
    half_width: float | None
    n: int
    level: float = 0.95

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def clipped(self, lowest: float, highest: float) -> tuple[float, float]:
        """``(low, high)`` cut to the metric's range ``[lowest, highest]`` (e.g. 0 and 100 for an accuracy in %):
        a t interval is symmetric and runs past a bound the metric cannot cross."""
        if self.half_width is None:
            raise ValueError(f"an interval of {self.n} seed(s) has no bounds to clip")
        return max(self.low, lowest), min(self.high, highest)


def _check(values, name: str) -> list[float]:
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be a non-empty list of finite numbers, got {values}")
    return values


def _mean_var(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def t_factor(dof: float, level: float = 0.95) -> float:
    """Half-width of a two-sided ``level`` Student's t interval in standard errors (12.7 at 1 degree of freedom,
    i.e. 2 seeds; 4.3 at 2)."""
    return float(_scipy_stats.t.ppf((1 + level) / 2, dof))


def mean_interval(values, level: float = 0.95) -> Interval:
    """Student's t interval of the mean of ``values`` (one number per seed)."""
    values = _check(values, "values")
    n = len(values)
    if n < 2:
        return Interval(values[0], None, n, level)
    mean, var = _mean_var(values)
    return Interval(mean, t_factor(n - 1, level) * math.sqrt(var / n), n, level)


def difference_interval(a, b, level: float = 0.95) -> Interval:
    """Welch's interval of ``mean(a) − mean(b)``; ``n`` is the smaller number of seeds."""
    a, b = _check(a, "a"), _check(b, "b")
    if min(len(a), len(b)) < 2:
        return Interval(sum(a) / len(a) - sum(b) / len(b), None, min(len(a), len(b)), level)
    (ma, va), (mb, vb) = _mean_var(a), _mean_var(b)
    sa, sb = va / len(a), vb / len(b)
    se = math.sqrt(sa + sb)
    if se == 0:
        return Interval(ma - mb, 0.0, min(len(a), len(b)), level)
    dof = (sa + sb) ** 2 / (sa ** 2 / (len(a) - 1) + sb ** 2 / (len(b) - 1))
    return Interval(ma - mb, t_factor(dof, level) * se, min(len(a), len(b)), level)
