"""experiments.stats: t quantiles against published table values and a float64 integral of the density,
paired differences and their interval against a hand-computed example."""
import math

import numpy as np
import pytest

from experiments import stats

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


# Two-sided p-values at published critical values (NIST/SEMATECH e-Handbook 1.3.6.7.2, upper-tail
# t_{1-a/2, df}): a two-sided p of 2 x 0.025 = 0.05 and of 2 x 0.005 = 0.01.
@pytest.mark.parametrize('t,df,p', [(12.70620, 1, 0.05), (2.776445, 4, 0.05), (2.262157, 9, 0.05),
                                    (4.604095, 4, 0.01), (3.169273, 10, 0.01), (63.65674, 1, 0.01)])
def test_two_sided_p_at_table_critical_values(t, df, p):
    assert stats.t_two_sided_p(t, df) == pytest.approx(p, abs=1e-6)
    assert stats.t_two_sided_p(-t, df) == pytest.approx(p, abs=1e-6)


def test_two_sided_p_in_closed_form_for_one_and_two_degrees_of_freedom():
    # df 1 is the Cauchy distribution: P(|T| >= t) = 1 - (2 / pi) atan(t), so 1/2 at t = 1;
    # df 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so P(|T| >= t) = 1 - t / sqrt(2 + t^2)
    # (Student's t-distribution, special cases; e.g. Johnson, Kotz & Balakrishnan, ch. 28)
    assert stats.t_two_sided_p(1.0, 1) == pytest.approx(0.5, abs=1e-12)
    assert stats.t_two_sided_p(3.0, 1) == pytest.approx(1 - 2 / math.pi * math.atan(3.0), abs=1e-12)
    for t in (0.5, 1.732, 4.0):
        assert stats.t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    assert stats.t_two_sided_p(0.0, 5) == 1.0 and stats.t_two_sided_p(math.inf, 5) == 0.0


def test_paired_test_on_students_sleep_data():
    # Cushny & Peebles' sleep data (Student 1908; R's `sleep` data set): extra hours of sleep of 10
    # patients under two drugs. R: t.test(extra ~ group, data = sleep, paired = TRUE) gives
    # t = -4.0621, df = 9, p-value = 0.002833, 95% interval of group 1 - group 2 [-2.4598858, -0.7001142].
    drug1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    drug2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    d = stats.paired_difference(dict(enumerate(drug2)), dict(enumerate(drug1)))
    assert d['mean'] == pytest.approx(1.58)
    assert (d['low'], d['high']) == pytest.approx((0.7001142, 2.4598858), abs=1e-6)
    assert d['p'] == pytest.approx(0.002833, abs=5e-7)
    assert d['ahead'] == 9  # patient 5 slept the same under both
    reverse = stats.paired_difference(dict(enumerate(drug1)), dict(enumerate(drug2)))
    assert reverse['p'] == pytest.approx(d['p']) and reverse['ahead'] == 0


def test_paired_test_without_spread_or_partner():
    # the same difference on every seed: nothing to test it against, so no p and no interval
    # (an infinite t would make a chance tie of two seeds 'ahead' after any adjustment)
    same = stats.paired_difference({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 2.0, 2: 3.0})  # always +1
    assert same['mean'] == 1.0 and same['std'] == 0.0 and same['ahead'] == 3
    assert same['p'] is None and same['low'] is None and same['half_width'] is None
    # top-1s in steps of 0.01: 71.23 - 70.13 and 70.50 - 69.40 are both 1.10, as floats 1.1000000000000085
    # and 1.0999999999999943
    rounded = stats.paired_difference({0: 71.23, 1: 70.50}, {0: 70.13, 1: 69.40})
    assert rounded['p'] is None and rounded['std'] == 0.0 and rounded['mean'] == pytest.approx(1.10)
    tied = stats.paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert tied['p'] is None and tied['mean'] == 0.0 and tied['ahead'] == 0
    # one hundredth apart is a spread: tested (differences 1.10 and 1.11: t = 221 on 1 df)
    close = stats.paired_difference({0: 71.23, 1: 70.51}, {0: 70.13, 1: 69.40})
    assert close['p'] == pytest.approx(2 / math.pi * math.atan(1 / 221), rel=1e-3)
    assert stats.paired_difference({0: 2.0}, {0: 1.0})['p'] is None


def test_holm_against_a_worked_example():
    # Wikipedia, "Holm-Bonferroni method", example: four hypotheses with p = 0.01, 0.04, 0.03 and
    # 0.005 at alpha 0.05 -- H1 and H4 are rejected, H2 and H3 not. Adjusted by hand: sorted
    # 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06.
    adjusted = stats.holm({'H1': 0.01, 'H2': 0.04, 'H3': 0.03, 'H4': 0.005})
    assert adjusted == pytest.approx({'H1': 0.03, 'H2': 0.06, 'H3': 0.06, 'H4': 0.02})
    assert {h for h, p in adjusted.items() if p < 0.05} == {'H1', 'H4'}
    # capped at 1; a test without a p-value is not in the family (m = 2 here)
    assert stats.holm({'a': 0.6, 'b': 0.2, 'c': None}) == pytest.approx({'a': 0.6, 'b': 0.4, 'c': None})
    assert stats.holm({'a': 0.7, 'b': 0.8}) == pytest.approx({'a': 1.0, 'b': 1.0})


def test_holm_over_a_declared_family_counts_the_tests_without_a_p_value_yet():
    # the same worked example with H2 and H3 not yet run: as if their p were the largest, the two
    # known ones are adjusted with m = 4: 4 x 0.005 = 0.02, max(0.02, 3 x 0.01) = 0.03
    adjusted = stats.holm({'H1': 0.01, 'H2': None, 'H3': None, 'H4': 0.005}, family_size=4)
    assert adjusted == pytest.approx({'H1': 0.03, 'H2': None, 'H3': None, 'H4': 0.02})
