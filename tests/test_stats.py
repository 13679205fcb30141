"""One-sided rank tests of analysis.stats against brute force and hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from rlbias_jax.analysis import stats


def brute_force_p(x, y, alternative: str) -> float:
    """The exact one-sided p by the definition: Pearson ρ of the ranks for every ordering of y's ranks."""
    rank_x, rank_y = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    rho = np.corrcoef(rank_x, rank_y)[0, 1]
    sign = 1.0 if alternative == "greater" else -1.0
    count = total = 0
    for ordering in itertools.permutations(rank_y):
        count += sign * np.corrcoef(rank_x, ordering)[0, 1] >= sign * rho - 1e-9
        total += 1
    return count / total


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_exact_one_sided_p_equals_brute_force(n, alternative):
    rng = np.random.default_rng(n)
    for trial in range(3):
        x = rng.normal(size=n)
        y = x * (trial - 1) + rng.normal(size=n)
        if trial == 2:  # ties in both variables
            x, y = np.round(x), np.round(y * 2) / 2
            if np.ptp(x) == 0 or np.ptp(y) == 0:
                continue
        test = stats.spearman_test(x, y, alternative)
        assert test.method == f"exact ({math.factorial(n)} orderings)"
        assert test.statistic == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        assert test.p_one_sided == pytest.approx(brute_force_p(x, y, alternative), abs=1e-12)


def test_exact_one_sided_p_equals_brute_force_at_n_8():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=8), rng.normal(size=8)
    assert stats.spearman_test(x, y, "greater").p_one_sided == pytest.approx(brute_force_p(x, y, "greater"), abs=1e-12)


def test_hand_computed_exact_p_values():
    # n = 4 perfectly ordered: only the identity among 4! = 24 orderings reaches ρ = 1
    test = stats.spearman_test([0.5, 0.9, 1.3, 2.5], [0.1, 0.2, 0.7, 0.75])
    assert (test.statistic, test.p_one_sided, test.min_p) == (pytest.approx(1.0), pytest.approx(1 / 24), pytest.approx(1 / 24))
    assert test.can_reach_alpha and stats.verdict(test) == "support"
    # the same data against ρ < 0: every ordering is at most 1, so p = 1
    assert stats.spearman_test([0.5, 0.9, 1.3, 2.5], [0.1, 0.2, 0.7, 0.75], "less").p_one_sided == pytest.approx(1.0)
    # reversed order, alternative less: p = 1/24
    assert stats.spearman_test([1, 2, 3, 4], [4, 3, 2, 1], "less").p_one_sided == pytest.approx(1 / 24)
    # one adjacent swap: ρ = 1 − 6·2 / (4·15) = 0.8; ρ ≥ 0.8 for the identity and 3 adjacent swaps: 4/24
    test = stats.spearman_test([1, 2, 3, 4], [1, 2, 4, 3])
    assert test.statistic == pytest.approx(0.8) and test.p_one_sided == pytest.approx(4 / 24) and test.min_p == pytest.approx(1 / 24)
    assert stats.verdict(test) == "direction_not_significant"
    # n = 3: the smallest one-sided p is 1/6, so no data can reach 0.05
    test = stats.spearman_test([1, 2, 3], [1, 2, 3])
    assert test.p_one_sided == pytest.approx(1 / 6) and not test.can_reach_alpha and stats.verdict(test) == "no_power"
    # n = 4 with a tie in x: ρ = sqrt(0.9), and 2 of 24 orderings reach it, so p = min_p = 1/12 > 0.05
    test = stats.spearman_test([1, 1, 2, 3], [1, 2, 3, 4])
    assert test.statistic == pytest.approx(math.sqrt(0.9)) and test.p_one_sided == pytest.approx(2 / 24)
    assert test.min_p == pytest.approx(2 / 24) and stats.verdict(test) == "no_power"


def test_permutation_p_beyond_exact_is_deterministic_and_bounded():
    x = np.arange(12.0)
    test = stats.spearman_test(x, x**2, permutations=999, seed=3)
    assert test.method == "permutation (999 random orderings, seed 3)"
    assert test.p_one_sided == pytest.approx(1 / 1000) and test.min_p == pytest.approx(1 / 1000)  # (1 + 0) / (1 + 999)
    assert stats.spearman_test(x, x**2, permutations=999, seed=3) == test
    rng = np.random.default_rng(0)
    noise = rng.normal(size=30)
    sampled = stats.spearman_test(np.arange(30.0), noise, permutations=20_000)
    assert sampled.p_one_sided == pytest.approx(scipy.stats.spearmanr(np.arange(30.0), noise, alternative="greater").pvalue, abs=0.02)


def test_undefined_and_bad_input():
    assert not stats.spearman_test([1.0, 2.0], [1.0, 2.0]).defined
    assert not stats.spearman_test([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]).defined
    assert not stats.spearman_test([1.0, 2.0, 3.0], [math.inf] * 3).defined  # all "never": constant
    assert stats.verdict(stats.spearman_test([1.0, 2.0], [1.0, 2.0])) == "untestable"
    with pytest.raises(ValueError, match="nan"):
        stats.spearman_test([1.0, 2.0, math.nan], [1.0, 2.0, 3.0])


def test_infinite_evidence_ranks_after_every_rate():
    test = stats.spearman_test([0.5, 1.0, 2.0, 4.0], [math.inf, 0.5, 0.1, 0.0], "less")
    assert test.statistic == pytest.approx(-1.0) and test.p_one_sided == pytest.approx(1 / 24)


def brute_force_blocked_p(x, y, blocks) -> float:
    rank_x, rank_y = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    rho = np.corrcoef(rank_x, rank_y)[0, 1]
    members = [np.flatnonzero(blocks == b) for b in np.unique(blocks)]
    count = total = 0
    for choice in itertools.product(*(itertools.permutations(m) for m in members)):
        permuted = rank_y.copy()
        for positions, chosen in zip(members, choice):
            permuted[positions] = rank_y[list(chosen)]
        count += np.corrcoef(rank_x, permuted)[0, 1] >= rho - 1e-9
        total += 1
    return count / total


def test_blocked_test_permutes_within_seeds_only():
    # 2 seeds × 2 rates: ρ = 4 / sqrt(4 · 5); of the 2!·2! = 4 within-seed orderings only the identity reaches it
    test = stats.blocked_spearman_test([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], [0, 0, 1, 1])
    assert test.statistic == pytest.approx(4 / math.sqrt(20))
    assert test.p_one_sided == pytest.approx(1 / 4) and test.min_p == pytest.approx(1 / 4)
    assert test.method == "exact (4 orderings within seeds)"
    # the unblocked test of the same data has 24 orderings, and a different p
    assert stats.spearman_test([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]).p_one_sided == pytest.approx(4 / 24)
    rng = np.random.default_rng(5)
    rates = np.tile([0.0, 0.1, 0.5], 3)
    use = rates + rng.normal(scale=0.2, size=9)
    blocks = np.repeat([0, 1, 2], 3)
    assert stats.blocked_spearman_test(rates, use, blocks).p_one_sided == pytest.approx(brute_force_blocked_p(rates, use, blocks), abs=1e-12)


def test_random_block_orderings_stay_within_blocks_and_cover_all():
    blocks = np.array([2, 0, 1, 0, 2, 1, 1, 0])
    orderings = stats._random_block_orderings(blocks, 5000, np.random.default_rng(0))
    assert (blocks[orderings] == blocks[None, :]).all()
    assert len({tuple(row) for row in orderings}) == 2 * 6 * 6  # 2! · 3! · 3!


def test_mean_blocked_test_of_rising_tasks():
    rates = np.tile([0.0, 0.01, 0.1, 0.5], 3)
    blocks = np.repeat([0, 1, 2], 4)
    rising = (rates, rates + 0.001 * blocks, blocks)
    flat = (rates, np.tile([0.3, 0.1, 0.4, 0.2], 3) + 0.001 * blocks, blocks)
    test = stats.mean_blocked_spearman_test([rising, rising], permutations=999)
    assert test.statistic == pytest.approx(stats.blocked_spearman_test(*rising).statistic)
    assert test.p_one_sided == pytest.approx(1 / 1000) and test.n == 2
    assert stats.mean_blocked_spearman_test([flat, flat], permutations=999).p_one_sided > 0.2
    assert not stats.mean_blocked_spearman_test([]).defined


def test_masked_spearman_rows_ignores_missing_entries():
    rng = np.random.default_rng(2)
    x = np.tile(np.arange(8.0), (5, 1))
    y = rng.normal(size=(5, 8))
    y[0, [1, 4]] = np.nan
    y[1, :6] = np.nan  # two entries left: undefined
    expected = [scipy.stats.spearmanr(a[np.isfinite(b)], b[np.isfinite(b)]).statistic for a, b in zip(x, y)]
    expected[1] = np.nan
    np.testing.assert_allclose(stats.masked_spearman_rows(x, y), expected, atol=1e-12)
