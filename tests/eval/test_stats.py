"""The Wilcoxon signed-rank test of motorec.eval.stats against hand-worked cases and SciPy."""
import random

import pytest

from motorec.eval.stats import EXACT_MAX_PAIRS, bootstrap_ratio_ci, draw_means, wilcoxon_signed_rank


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


def test_draw_means_average_the_seeds_of_each_draw():
    ids, means = draw_means([0.1, 0.3, 0.5, 0.7, 0.2], [1, 1, 0, 0, 2])
    assert ids == [0, 1, 2] and means == pytest.approx([0.6, 0.2, 0.2])
    with pytest.raises(ValueError, match="same length"):
        draw_means([0.1], [0, 1])


def test_draw_level_wilcoxon_five_of_five_is_0_0625():
    # two seeds per draw, MoToRec ahead on every draw: 5 draw-level pairs, p = 2 / 2**5 (10 seed-level pairs
    # would wrongly give 2 / 2**10)
    draws = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    a = [0.30, 0.32, 0.25, 0.27, 0.40, 0.38, 0.22, 0.24, 0.35, 0.31]
    b = [0.20, 0.21, 0.22, 0.20, 0.30, 0.33, 0.20, 0.21, 0.30, 0.29]
    r = wilcoxon_signed_rank(draw_means(a, draws)[1], draw_means(b, draws)[1])
    assert r["n"] == 5 and r["wins"] == 5 and r["p_value"] == pytest.approx(0.0625)


def test_bootstrap_ratio_interval_hand_case_and_reproducible():
    # every unit has ratio exactly 2: every resample's ratio is 2
    r = bootstrap_ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], resamples=500)
    assert r["ratio"] == pytest.approx(2.0) and r["low"] == pytest.approx(2.0) and r["high"] == pytest.approx(2.0)
    a, b = [0.30, 0.25, 0.40, 0.22, 0.35], [0.20, 0.24, 0.30, 0.25, 0.28]
    r1, r2 = bootstrap_ratio_ci(a, b), bootstrap_ratio_ci(a, b)
    assert r1 == r2 and r1["resamples"] == 10_000 and r1["level"] == 0.95
    assert r1["low"] < r1["ratio"] < r1["high"]
    assert r1["ratio"] == pytest.approx(sum(a) / sum(b))


def test_bootstrap_interval_shrinks_with_more_draws():
    rng = random.Random(3)
    a = [0.3 + rng.gauss(0, 0.05) for _ in range(40)]
    b = [0.25 + rng.gauss(0, 0.05) for _ in range(40)]
    few = bootstrap_ratio_ci(a[:5], b[:5], resamples=2000)
    many = bootstrap_ratio_ci(a, b, resamples=2000)
    assert many["high"] - many["low"] < few["high"] - few["low"]
    assert many["low"] < many["ratio"] < many["high"]


@pytest.mark.parametrize("kwargs, match", [({"resamples": 0}, "resamples"), ({"level": 1.0}, "level")])
def test_bootstrap_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ratio_ci([1.0], [1.0], **kwargs)
    with pytest.raises(ValueError, match="paired"):
        bootstrap_ratio_ci([1.0, 2.0], [1.0])
