"""The Wilcoxon signed-rank test of motorec.eval.stats against hand-worked cases and SciPy."""
import random

import pytest

from motorec.eval.stats import EXACT_MAX_PAIRS, wilcoxon_signed_rank


def test_all_positive_five_pairs_gives_the_smallest_exact_p():
    r = wilcoxon_signed_rank([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert r["w_plus"] == 15 and r["w_minus"] == 0 and r["wins"] == 5 and r["losses"] == 0
    assert r["p_value"] == pytest.approx(2 / 32) and r["exact"] == 1.0


def test_zero_differences_are_dropped_and_ties_share_ranks():
    # differences: -0.02, 0.1, 0.1, 0 (dropped), -0.05, 0.3 -> ranks of |d|: 1, 3.5, 3.5, 2, 5
    r = wilcoxon_signed_rank([0.1, 0.2, 0.3, 0.25, 0.15, 0.4], [0.12, 0.1, 0.2, 0.25, 0.2, 0.1])
    assert r["n"] == 5 and r["ties"] == 1
    assert r["w_plus"] == pytest.approx(12.0) and r["w_minus"] == pytest.approx(3.0)


def test_no_difference_gives_p_one():
    assert wilcoxon_signed_rank([0.5, 0.5], [0.5, 0.5])["p_value"] == 1.0


@pytest.mark.parametrize("n", [6, 11, EXACT_MAX_PAIRS + 9])
def test_matches_scipy(n):
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(n)
    a = [round(rng.random(), 2) for _ in range(n)]  # rounding makes tied |differences|
    b = [round(x + rng.gauss(0.05, 0.2), 2) for x in a]
    ours = wilcoxon_signed_rank(a, b)
    if n <= EXACT_MAX_PAIRS:
        # with ties SciPy's exact method is unavailable; its permutation test is the same exact computation
        ref = stats.wilcoxon(a, b, zero_method="wilcox", method=stats.PermutationMethod(n_resamples=2 ** n)).pvalue
    else:
        ref = stats.wilcoxon(a, b, zero_method="wilcox", method="approx", correction=False).pvalue
    assert ours["p_value"] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="paired"):
        wilcoxon_signed_rank([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="not finite"):
        wilcoxon_signed_rank([1.0, float("nan")], [1.0, 2.0])
