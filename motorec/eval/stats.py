"""Paired comparison of two methods over several runs: the Wilcoxon signed-rank test.

Used by ``motorec compare`` to say whether MoToRec's per-run metric differs from the strongest baseline's
beyond what the spread of cold-item draws and seeds explains. No SciPy needed: for up to
:data:`EXACT_MAX_PAIRS` non-zero differences the p-value is exact (every sign pattern of the ranks is
enumerated, ties keeping their average ranks, as a permutation test); above it the normal approximation with
the tie correction is used (SciPy's ``wilcoxon(..., method="approx")`` without continuity correction).
Zero differences are dropped before ranking (Wilcoxon's original treatment, SciPy's ``zero_method="wilcox"``).
"""
from __future__ import annotations

import math
from itertools import product
from typing import Dict, Sequence

__all__ = ["wilcoxon_signed_rank", "EXACT_MAX_PAIRS"]

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
