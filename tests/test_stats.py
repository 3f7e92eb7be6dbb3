"""desupcon.analysis.stats against scipy's t and Welch intervals."""

import math

import numpy as np
import pytest
from scipy import stats

from desupcon.analysis.stats import difference_interval, mean_interval, t_factor


@pytest.mark.parametrize("values", [[70.1, 71.3, 69.8], [1.0, 2.0], [5.0, 5.5, 6.5, 4.0, 5.2]])
def test_mean_interval_matches_scipy(values):
    ci = mean_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (ci.low, ci.high) == pytest.approx((low, high)) and ci.n == len(values)


@pytest.mark.parametrize("a,b", [([70.1, 71.3, 69.8], [68.0, 69.5]), ([1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 3.0])])
def test_difference_interval_matches_scipy_welch(a, b):
    ci = difference_interval(a, b)
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (ci.low, ci.high) == pytest.approx((welch.low, welch.high))
    assert ci.mean == pytest.approx(np.mean(a) - np.mean(b))


def test_one_seed_gives_no_interval_not_a_zero_one():
    assert mean_interval([70.0]).half_width is None and mean_interval([70.0]).low is None
    assert difference_interval([70.0], [68.0, 69.0]).half_width is None
    assert difference_interval([70.0], [68.0, 69.0]).mean == pytest.approx(1.5)


@pytest.mark.parametrize("bad", [[], [1.0, math.nan]])
def test_bad_values_raise(bad):
    with pytest.raises(ValueError, match="non-empty list of finite numbers"):
        mean_interval(bad)


def test_two_seeds_give_a_t_interval_of_twelve_point_seven_standard_errors():
    assert t_factor(1) == pytest.approx(12.706, abs=1e-3) and t_factor(2) == pytest.approx(4.303, abs=1e-3)
    ci = mean_interval([96.39, 96.94])
    assert ci.half_width == pytest.approx(12.706 * stats.sem([96.39, 96.94]), rel=1e-4)


def test_an_interval_is_clipped_to_the_metrics_range():
    ci = mean_interval([96.39, 96.94])  # 93.17 .. 100.16
    assert ci.high > 100 and ci.clipped(0.0, 100.0) == (pytest.approx(ci.low), 100.0)
    assert mean_interval([1.0, 2.0, 3.0]).clipped(0.0, 100.0) == (0.0, pytest.approx(2 + t_factor(2) / math.sqrt(3)))
    with pytest.raises(ValueError, match="1 seed"):
        mean_interval([70.0]).clipped(0.0, 100.0)
