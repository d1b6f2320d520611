"""helper.stats: t quantiles against published table values and a float64 integral of the density,
paired differences and their interval against a hand-computed example."""
import math

import numpy as np
import pytest

from helper import stats

# Two-sided 95% Student-t critical values t_{0.975, df} (standard statistical tables, e.g. NIST/SEMATECH
# e-Handbook 1.3.6.7.2), to 7 significant digits.
T_TABLE_975 = {1: 12.70620, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912,
               9: 2.262157, 10: 2.228139, 20: 2.085963, 30: 2.042272, 100: 1.983972}


@pytest.mark.parametrize('df,expected', sorted(T_TABLE_975.items()))
def test_t_quantile_matches_the_published_table(df, expected):
    assert stats.t_quantile_two_sided(0.95, df) == pytest.approx(expected, abs=2e-5)


def test_t_quantile_at_90_percent_matches_the_table():
    # t_{0.95, df}: 6.313752 (df 1), 2.015048 (df 5), 1.812461 (df 10)
    for df, expected in ((1, 6.313752), (5, 2.015048), (10, 1.812461)):
        assert stats.t_quantile_two_sided(0.90, df) == pytest.approx(expected, abs=2e-5)


@pytest.mark.parametrize('df', [1, 2, 3, 4, 7, 12])
def test_two_sided_mass_equals_the_integral_of_the_t_density(df):
    def density(x):
        c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
        return c * (1 + x * x / df) ** (-(df + 1) / 2)
    for t in (0.3, 1.0, 2.5, 6.0):
        x = np.linspace(0.0, t, 20001)
        y = np.array([density(v) for v in x])
        integral = 2 * (x[1] - x[0]) / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())  # Simpson
        assert stats.t_two_sided_mass(t, df) == pytest.approx(integral, abs=1e-9)


def test_degrees_of_freedom_must_be_positive_integers():
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match='positive integer'):
            stats.t_two_sided_mass(1.0, bad)


def test_paired_difference_against_a_hand_computed_example():
    row = {0: 70.0, 1: 72.0, 2: 71.0, 3: 73.0, 9: 99.0}  # seed 9 has no partner: left out
    kd = {0: 69.0, 1: 70.5, 2: 71.0, 3: 71.0, 7: 10.0}
    d = stats.paired_difference(row, kd)
    # differences 1.0, 1.5, 0.0, 2.0: mean 1.125; squared deviations sum 2.1875, /3 -> sd 0.8539126
    # se = 0.8539126 / 2 = 0.4269563; half width = 3.182446 x se = 1.358771
    assert d['n'] == 4 and d['seeds'] == [0, 1, 2, 3]
    assert d['mean'] == pytest.approx(1.125)
    assert d['std'] == pytest.approx(0.8539126, abs=1e-7)
    assert d['half_width'] == pytest.approx(1.358771, abs=1e-5)
    assert (d['low'], d['high']) == pytest.approx((1.125 - 1.358771, 1.125 + 1.358771), abs=1e-5)


def test_paired_difference_differs_from_the_unpaired_one():
    # a shared seed effect: the paired interval is narrow, the difference of means alone would not say so
    base = {s: 60.0 + 5 * s for s in range(5)}
    row = {s: v + 0.5 + (0.1 if s % 2 else -0.1) for s, v in base.items()}
    d = stats.paired_difference(row, base)
    assert d['mean'] == pytest.approx(0.5 + (2 * 0.1 - 3 * 0.1) / 5)
    assert d['high'] - d['low'] < 0.5


def test_one_paired_seed_gives_a_difference_without_interval():
    d = stats.paired_difference({0: 2.0, 1: 3.0}, {1: 1.0})
    assert d['n'] == 1 and d['mean'] == 2.0 and d['std'] is None and d['low'] is None and d['half_width'] is None


def test_mean_std_and_pearson_by_hand():
    m = stats.mean_std([1.0, 2.0, 4.0])
    assert m['n'] == 3 and m['mean'] == pytest.approx(7 / 3)
    assert m['std'] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert stats.mean_std([5.0])['std'] is None
    x, y = [1.0, 2.0, 3.0, 5.0], [2.0, 4.0, 7.0, 8.0]
    assert stats.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert stats.pearson([1.0, 2.0], [1.0, 3.0]) is None
    assert stats.slope(x, y) == pytest.approx(np.polyfit(x, y, 1)[0])
    # (1, 2), (2, 2), (4, 5): mean x 7/3, mean y 3; sxy = 5, sxx = 14/3
    assert stats.slope([1.0, 2.0, 4.0], [2.0, 2.0, 5.0]) == pytest.approx(15 / 14)
    assert stats.slope([1.0], [2.0]) is None and stats.slope([3.0, 3.0], [1.0, 2.0]) is None
    assert stats.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
