"""Paired comparison of two methods over several runs: the Wilcoxon signed-rank test, draw-level values and a
bootstrap interval of the ratio of means.

Used by ``motorec compare`` to say whether MoToRec's per-run metric differs from the strongest baseline's
beyond what the spread of cold-item draws and seeds explains. No SciPy needed: for up to
:data:`EXACT_MAX_PAIRS` non-zero differences the p-value is exact (every sign pattern of the ranks is
enumerated, ties keeping their average ranks, as a permutation test); above it the normal approximation with
the tie correction is used (SciPy's ``wilcoxon(..., method="approx")`` without continuity correction).
Zero differences are dropped before ranking (Wilcoxon's original treatment, SciPy's ``zero_method="wilcox"``).

Seeds of one cold-item draw share its test items, so they are not independent observations: :func:`draw_means`
averages them first, and the tests run over draws (one value per draw).
"""
from __future__ import annotations

import math
from itertools import product
from typing import Dict, List, Sequence, Tuple

__all__ = ["wilcoxon_signed_rank", "EXACT_MAX_PAIRS", "draw_means", "bootstrap_ratio_ci"]

EXACT_MAX_PAIRS = 20


def _average_ranks(values: Sequence[float]) -> list:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of the paired differences ``a[i] - b[i]``.

    Returns ``{"n": pairs used (non-zero differences), "w_plus": sum of the ranks of positive differences,
    "w_minus": of negative ones, "p_value": two-sided p, "exact": 1.0 if enumerated else 0.0,
    "wins": count of a > b, "losses": count of a < b, "ties": count of a == b}``. With no non-zero difference
    the p-value is 1.0. With ``n`` pairs the smallest attainable exact p-value is ``2 / 2**n`` (0.0625 for
    five runs): say so when reporting few runs.

    Raises ValueError when the lengths differ or a value is not finite.
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must be paired (same length), got {len(a)} and {len(b)}")
    diffs = []
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"pair {i} is not finite: ({x}, {y})")
        diffs.append(x - y)
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    nz = [d for d in diffs if d != 0.0]
    n = len(nz)
    out = {"n": float(n), "wins": float(wins), "losses": float(losses), "ties": float(len(diffs) - n)}
    if n == 0:
        return {**out, "w_plus": 0.0, "w_minus": 0.0, "p_value": 1.0, "exact": 1.0}
    ranks = _average_ranks([abs(d) for d in nz])
    w_plus = sum(r for r, d in zip(ranks, nz) if d > 0)
    w_minus = sum(r for r, d in zip(ranks, nz) if d < 0)
    total = sum(ranks)
    mean = total / 2.0
    observed = abs(w_plus - mean)
    if n <= EXACT_MAX_PAIRS:
        # Under H0 each rank's sign is + or - with probability 1/2: count the patterns at least as extreme.
        extreme = 0
        eps = 1e-9 * max(total, 1.0)
        for signs in product((0, 1), repeat=n):
            wp = sum(r for r, s in zip(ranks, signs) if s)
            if abs(wp - mean) >= observed - eps:
                extreme += 1
        p = extreme / float(2 ** n)
        return {**out, "w_plus": w_plus, "w_minus": w_minus, "p_value": min(1.0, p), "exact": 1.0}
    # normal approximation with the tie correction: var = sum(r^2) / 4
    var = sum(r * r for r in ranks) / 4.0
    z = observed / math.sqrt(var) if var > 0 else 0.0
    p = math.erfc(z / math.sqrt(2.0))
    return {**out, "w_plus": w_plus, "w_minus": w_minus, "p_value": min(1.0, p), "exact": 0.0}


def draw_means(values: Sequence[float], draws: Sequence[int]) -> Tuple[List[int], List[float]]:
    """One value per draw: the mean of ``values[i]`` over the runs with the same ``draws[i]``. Returns
    ``(sorted draw ids, their means)``. Raises ValueError when the lengths differ or nothing is given."""
    if len(values) != len(draws):
        raise ValueError(f"values and draws must have the same length, got {len(values)} and {len(draws)}")
    if not values:
        raise ValueError("values is empty")
    by: Dict[int, List[float]] = {}
    for v, d in zip(values, draws):
        by.setdefault(int(d), []).append(float(v))
    ids = sorted(by)
    return ids, [sum(by[d]) / len(by[d]) for d in ids]


def bootstrap_ratio_ci(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, level: float = 0.95,
                       seed: int = 0) -> Dict[str, float]:
    """Percentile bootstrap interval of ``mean(a) / mean(b)`` over paired units (draws): each resample draws
    ``len(a)`` unit indices with replacement (the same indices for ``a`` and ``b``, keeping the pairing) and
    takes the ratio of the two means. The seed is fixed, so a summary is reproducible.

    Returns ``{"ratio": observed, "low": , "high": , "level": , "resamples": , "n": }``; a resample whose
    ``b`` mean is 0 gives ``inf`` (it sorts last). Raises ValueError for unpaired or empty input, a non-finite
    value, ``resamples < 1`` or ``level`` outside (0, 1).
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must be paired (same length), got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("a and b are empty")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an int >= 1, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    xs, ys = [float(v) for v in a], [float(v) for v in b]
    if not all(math.isfinite(v) for v in xs + ys):
        raise ValueError("a and b must hold finite values")

    def ratio(sa: float, sb: float) -> float:
        return sa / sb if sb != 0 else math.inf

    import numpy as np

    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    sa, sb = np.asarray(xs)[idx].sum(axis=1), np.asarray(ys)[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = np.where(sb != 0, sa / np.where(sb != 0, sb, 1.0), np.inf)
    stats = sorted(float(v) for v in stats)
    tail = (1.0 - level) / 2.0

    def quantile(q: float) -> float:  # linear interpolation between order statistics (numpy's default)
        pos = q * (resamples - 1)
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        if stats[hi] == math.inf:
            return math.inf if pos > lo or stats[lo] == math.inf else stats[lo]
        return stats[lo] + (stats[hi] - stats[lo]) * (pos - lo)

    return {"ratio": ratio(sum(xs), sum(ys)), "low": quantile(tail), "high": quantile(1.0 - tail),
            "level": level, "resamples": float(resamples), "n": float(n)}
