"""Small-sample statistics of the evidence runs: mean ± std over seeds, paired differences with a
Student-t confidence interval and a paired t-test, and Holm's step-down adjustment over a family of
tests (no scipy: the t distribution of integer degrees of freedom has a closed-form CDF, Abramowitz
& Stegun 26.7.3-26.7.4, inverted here by bisection)."""
import math
import statistics
from typing import Dict, Optional, Sequence


SAME_DIFFERENCE = 1e-9  # relative: paired differences closer than this are one value


def t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's T with integer ``df`` >= 1 degrees of freedom (A&S 26.7.3/4)."""
    if isinstance(df, bool) or int(df) != df or df < 1:
        raise ValueError(f'degrees of freedom must be a positive integer, got {df!r}')
    df = int(df)
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        # 2/pi * (theta + sin(theta) * (cos + 2/3 cos^3 + (2*4)/(3*5) cos^5 + ... up to cos^(df-2)))
        series, term = 0.0, math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + math.sin(theta) * series)
    # sin(theta) * (1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ... up to cos^(df-2))
    series, term = 0.0, 1.0
    for k in range(1, df // 2 + 1):
        series += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * series


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's T with integer ``df`` degrees of freedom: the two-sided p-value
    of a t statistic (1 at t = 0, towards 0 as |t| grows; infinite t gives 0)."""
    if math.isinf(t):
        return 0.0
    return min(1.0, max(0.0, 1.0 - t_two_sided_mass(abs(t), df)))


def holm(p_values: Dict[str, Optional[float]], family_size: Optional[int] = None) -> Dict[str, Optional[float]]:
    """Holm's step-down adjusted p-values of one family of tests (Holm 1979): with the m p-values
    sorted ascending, p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where
    the adjusted p < alpha keeps the chance of any false rejection in the family below alpha.
    Tests without a p-value (None) stay None. `family_size`: the m of a declared family some of
    whose tests have no p-value yet (they count as the largest, so the adjustment stays valid);
    default: the tests with one."""
    tested = sorted((p, name) for name, p in p_values.items() if p is not None)
    m = len(tested) if family_size is None else max(family_size, len(tested))
    running, adjusted = 0.0, {name: None for name in p_values}
    for rank, (p, name) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[name] = running
    return adjusted


def t_quantile_two_sided(confidence: float, df: int) -> float:
    """The t with P(|T| < t) = ``confidence``, e.g. 12.706 for 0.95 and df = 1."""
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must lie in (0, 1), got {confidence}')
    low, high = 0.0, 1.0
    while t_two_sided_mass(high, df) < confidence:
        high *= 2
    for _ in range(200):  # bisection to float precision
        mid = (low + high) / 2
        if t_two_sided_mass(mid, df) < confidence:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def mean_std(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean and sample standard deviation (n - 1); std is None below two values."""
    values = [float(v) for v in values]
    return {'n': len(values), 'mean': statistics.fmean(values) if values else None,
            'std': statistics.stdev(values) if len(values) > 1 else None}


def paired_difference(row: Dict[int, float], baseline: Dict[int, float], confidence: float = 0.95) -> dict:
    """Mean of row - baseline over the seeds both have, with its t-interval.

    ``row`` / ``baseline``: seed -> value. Pairing removes what the seeds share (init, data order,
    augmentation). Returns {'n', 'seeds', 'mean', 'std', 'half_width', 'low', 'high', 'confidence',
    'p', 'ahead'}: 'p' is the two-sided paired t-test p-value of a zero mean difference, 'ahead' the
    number of seeds where the row is higher; the interval and p are None below two paired seeds and
    when every seed gives the same difference (top-1s move in steps of one test image, so two seeds
    can tie exactly: no spread to test against, rather than a certain effect).
    """
    seeds = sorted(set(row) & set(baseline))
    diffs = [float(row[s]) - float(baseline[s]) for s in seeds]
    out = {'n': len(seeds), 'seeds': seeds, 'confidence': confidence, 'mean': None, 'std': None,
           'half_width': None, 'low': None, 'high': None, 'p': None, 'ahead': sum(d > 0 for d in diffs)}
    if not diffs:
        return out
    out['mean'] = statistics.fmean(diffs)
    if len(diffs) > 1:
        # equal differences read from rounded top-1s differ by float noise only: no spread
        spread = max(diffs) - min(diffs) > SAME_DIFFERENCE * max(1.0, max(abs(d) for d in diffs))
        out['std'] = statistics.stdev(diffs) if spread else 0.0
        if spread:
            se = out['std'] / math.sqrt(len(diffs))
            out['half_width'] = t_quantile_two_sided(confidence, len(diffs) - 1) * se
            out['low'], out['high'] = out['mean'] - out['half_width'], out['mean'] + out['half_width']
            out['p'] = t_two_sided_p(out['mean'] / se, len(diffs) - 1)
    return out


def _co_moments(name: str, xs: Sequence[float], ys: Sequence[float], minimum: int) -> Optional[tuple]:
    """Centred sums (sxx, syy, sxy) of paired values (equal lengths required); None below
    `minimum` pairs."""
    if len(xs) != len(ys):
        raise ValueError(f'{name} needs equal lengths, got {len(xs)} and {len(ys)}')
    if len(xs) < minimum:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return (sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys),
            sum((x - mx) * (y - my) for x, y in zip(xs, ys)))


def slope(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Least-squares slope of ys on xs, None below two points or when xs is constant."""
    moments = _co_moments('slope', xs, ys, 2)
    if moments is None or moments[0] == 0:
        return None
    sxx, _, sxy = moments
    return sxy / sxx


def pearson(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Pearson correlation, None below three points or when either side is constant."""
    moments = _co_moments('pearson', xs, ys, 3)
    if moments is None:
        return None
    sxx, syy, sxy = moments
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)
