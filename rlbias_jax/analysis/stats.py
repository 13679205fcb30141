"""Numerics of SPEC §7–§8: one-sided rank tests, permutation nulls, bootstrap, logistic fit.

- `spearman_test`: Spearman ρ with a pre-registered one-sided p-value. Exact (every
  ordering of y enumerated) for n ≤ EXACT_MAX_N; beyond, PERMUTATIONS random orderings
  from a fixed seed, p = (1 + #{ρ* ≥ ρ}) / (1 + draws). `min_p` is the smallest p the
  test can report at this n and tie pattern: when min_p ≥ α no data can be significant.
- `blocked_spearman_test`: the same for H2, permuting y only within blocks (the runs of
  one seed share their initial policy across rates, so seeds are blocks); exact when
  the blocks admit few orderings.
- `masked_spearman_rows`: ρ per row, NaN entries left out (bootstrap resamples).

Everything is deterministic: random draws come from numpy Generators with fixed seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings

import numpy as np
import pandas as pd
import scipy.optimize
import scipy.stats

from rlbias_jax.analysis.tables import PARTITIONS

EXACT_MAX_N = 8  # 8! = 40,320 orderings
PERMUTATIONS = 20_000  # Monte Carlo orderings: the SE of p near 0.05 is 0.0015
PERMUTATION_SEED = 0
MIN_POINTS = 3  # ρ is undefined with fewer points
ALPHA = 0.05
_TOLERANCE = 1e-12  # ρ's of equal orderings differ by rounding only
ALTERNATIVES = {"greater": 1.0, "less": -1.0}


# ---------------------------------------------------------------------------
# Correlation of rows


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of x with the same row of y; nan for constant rows."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (x * y).sum(axis=1) / denominator
    rho[~(denominator > 1e-12)] = np.nan
    return np.clip(rho, -1.0, 1.0)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row pair (average ranks for ties); nan where a row is constant."""
    return _pearson_rows(scipy.stats.rankdata(x, axis=1), scipy.stats.rankdata(y, axis=1))


def masked_spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ per row over the entries where both x and y are finite; nan with fewer
    than MIN_POINTS entries or a constant variable."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(keep, x, np.nan), np.where(keep, y, np.nan)
    rank_x = scipy.stats.rankdata(x, axis=1, nan_policy="omit")
    rank_y = scipy.stats.rankdata(y, axis=1, nan_policy="omit")
    count = keep.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centred_x = np.where(keep, rank_x - np.nanmean(rank_x, axis=1, keepdims=True), 0.0)
        centred_y = np.where(keep, rank_y - np.nanmean(rank_y, axis=1, keepdims=True), 0.0)
    denominator = np.sqrt((centred_x**2).sum(axis=1) * (centred_y**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (centred_x * centred_y).sum(axis=1) / denominator
    rho[(count < MIN_POINTS) | ~(denominator > 1e-12)] = np.nan
    return np.clip(rho, -1.0, 1.0)


# ---------------------------------------------------------------------------
# One-sided Spearman test


@dataclasses.dataclass(frozen=True)
class RankTest:
    """A one-sided rank-correlation test. `statistic` is ρ (or a mean of ρ's for H2)."""

    statistic: float
    p_one_sided: float
    min_p: float  # the smallest p-value this test can give with these data's n and ties
    method: str
    n: int

    @property
    def defined(self) -> bool:
        return math.isfinite(self.statistic)

    @property
    def can_reach_alpha(self) -> bool:
        return math.isfinite(self.min_p) and self.min_p < ALPHA


UNDEFINED = "undefined"


def _undefined(n: int) -> RankTest:
    return RankTest(math.nan, math.nan, math.nan, UNDEFINED, n)


@functools.lru_cache(maxsize=EXACT_MAX_N + 1)
def all_orderings(n: int) -> np.ndarray:
    """Every permutation of range(n), int[n!, n] (cached: 8! × 8 is 0.3 MB)."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)


def _p_values(null: np.ndarray, observed: float, extreme: float, sign: float, exact: bool) -> tuple[float, float]:
    """(p, min_p) of a one-sided test from null statistics (sign +1: large is extreme)."""
    at_least = np.count_nonzero(sign * null >= sign * observed - _TOLERANCE)
    at_extreme = np.count_nonzero(sign * null >= sign * extreme - _TOLERANCE)
    if exact:
        return at_least / null.size, at_extreme / null.size
    return (1 + at_least) / (1 + null.size), (1 + at_extreme) / (1 + null.size)


def spearman_test(
    x, y, alternative: str = "greater", permutations: int = PERMUTATIONS, seed: int = PERMUTATION_SEED
) -> RankTest:
    """Spearman ρ of (x, y) and its one-sided p-value under random orderings of y.

    alternative "greater": H: ρ > 0, p = P(ρ* ≥ ρ); "less": H: ρ < 0, p = P(ρ* ≤ ρ).
    Undefined (nan) with fewer than MIN_POINTS points or a constant variable.
    """
    sign = ALTERNATIVES[alternative]
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman_test: x and y must be 1-D of equal length (got {x.shape} and {y.shape})")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("spearman_test: x and y must not contain nan (infinities rank last or first)")
    n = x.size
    rank_x, rank_y = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    if n < MIN_POINTS or np.ptp(rank_x) == 0 or np.ptp(rank_y) == 0:
        return _undefined(n)
    rho = float(_pearson_rows(rank_x[None], rank_y[None])[0])
    # the most extreme ordering: y's ranks sorted along x's (reversed for "less")
    aligned = np.empty(n)
    aligned[np.argsort(rank_x, kind="stable")] = np.sort(rank_y)[:: int(sign)]
    extreme = float(_pearson_rows(rank_x[None], aligned[None])[0])
    exact = n <= EXACT_MAX_N
    if exact:
        orderings = all_orderings(n)
        method = f"exact ({orderings.shape[0]} orderings)"
    else:
        orderings = np.random.default_rng(seed).permuted(np.broadcast_to(np.arange(n), (permutations, n)), axis=1)
        method = f"permutation ({permutations} random orderings, seed {seed})"
    p_value, min_p = _p_values(_null_rhos(rank_x, rank_y, orderings), rho, extreme, sign, exact)
    return RankTest(rho, float(p_value), float(min_p), method, n)


# ---------------------------------------------------------------------------
# Permutations within blocks (H2)


def _block_orderings(blocks: np.ndarray, limit: int) -> np.ndarray | None:
    """Every ordering of the indices that permutes only within blocks, int[P, m]; None if P > limit."""
    members = [np.flatnonzero(blocks == block) for block in np.unique(blocks)]
    total = math.prod(math.factorial(len(m)) for m in members)
    if total > limit:
        return None
    orderings = np.empty((total, blocks.size), dtype=np.int64)
    for row, choice in enumerate(itertools.product(*(itertools.permutations(m) for m in members))):
        for positions, chosen in zip(members, choice):
            orderings[row, positions] = chosen
    return orderings


def _random_block_orderings(blocks: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """`draws` random orderings that permute indices only within blocks, int[draws, m].

    Sorting (block, uniform key) shuffles each block; `grouped` maps the sorted layout back.
    """
    grouped = np.argsort(blocks, kind="stable")
    block_codes = np.unique(blocks, return_inverse=True)[1].astype(np.float64)
    shuffled = np.argsort(block_codes[None, :] * 2.0 + rng.random((draws, blocks.size)), axis=1)
    orderings = np.empty_like(shuffled)
    orderings[:, grouped] = shuffled
    return orderings


def _null_rhos(rank_x: np.ndarray, rank_y: np.ndarray, orderings: np.ndarray, chunk: int = 20_000) -> np.ndarray:
    """ρ of rank_x with rank_y[ordering] for each row of orderings (in chunks, to bound memory)."""
    parts = []
    for start in range(0, orderings.shape[0], chunk):
        permuted = rank_y[orderings[start : start + chunk]]
        parts.append(_pearson_rows(np.broadcast_to(rank_x, permuted.shape), permuted))
    return np.concatenate(parts)


def _blocked_rhos(rank_x: np.ndarray, rank_y: np.ndarray, blocks: np.ndarray) -> tuple[float, float]:
    """(observed ρ, the largest ρ any within-block ordering of y can give)."""
    aligned = rank_y.copy()
    for block in np.unique(blocks):
        positions = np.flatnonzero(blocks == block)
        aligned[positions[np.argsort(rank_x[positions], kind="stable")]] = np.sort(rank_y[positions])
    rho, extreme = _pearson_rows(np.stack([rank_x, rank_x]), np.stack([rank_y, aligned]))
    return float(rho), float(extreme)


def blocked_spearman_test(x, y, blocks, permutations: int = PERMUTATIONS, seed: int = PERMUTATION_SEED) -> RankTest:
    """One-sided ("greater") Spearman test of (x, y), permuting y only within `blocks`.

    Exact when the blocks admit at most 8! orderings, else `permutations` random ones.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    blocks = np.asarray(blocks)
    rank_x, rank_y = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    if x.size < MIN_POINTS or np.ptp(rank_x) == 0 or np.ptp(rank_y) == 0:
        return _undefined(x.size)
    rho, extreme = _blocked_rhos(rank_x, rank_y, blocks)
    orderings = _block_orderings(blocks, math.factorial(EXACT_MAX_N))
    exact = orderings is not None
    if exact:
        method = f"exact ({orderings.shape[0]} orderings within seeds)"
    else:
        orderings = _random_block_orderings(blocks, permutations, np.random.default_rng(seed))
        method = f"permutation within seeds ({permutations} random orderings, seed {seed})"
    p_value, min_p = _p_values(_null_rhos(rank_x, rank_y, orderings), rho, extreme, 1.0, exact)
    return RankTest(rho, float(p_value), float(min_p), method, int(x.size))


def mean_blocked_spearman_test(
    datasets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], permutations: int = PERMUTATIONS, seed: int = PERMUTATION_SEED
) -> RankTest:
    """One-sided ("greater") test of the mean over datasets (x, y, blocks) of ρ(x, y); the
    null permutes y within the blocks of every dataset independently (random orderings)."""
    if not datasets:
        return _undefined(0)
    if len(datasets) == 1:  # the mean of one ρ is that ρ: use its own (possibly exact) test
        return dataclasses.replace(blocked_spearman_test(*datasets[0], permutations=permutations, seed=seed), n=1)
    rng = np.random.default_rng(seed)
    observed, extremes, nulls = [], [], []
    for x, y, blocks in datasets:
        rank_x, rank_y, blocks = scipy.stats.rankdata(x), scipy.stats.rankdata(y), np.asarray(blocks)
        rho, extreme = _blocked_rhos(rank_x, rank_y, blocks)
        observed.append(rho)
        extremes.append(extreme)
        nulls.append(_null_rhos(rank_x, rank_y, _random_block_orderings(blocks, permutations, rng)))
    statistic = float(np.mean(observed))
    p_value, min_p = _p_values(np.mean(nulls, axis=0), statistic, float(np.mean(extremes)), 1.0, exact=False)
    method = f"mean ρ over {len(datasets)} task(s); rates permuted within seeds ({permutations} random orderings, seed {seed})"
    return RankTest(statistic, float(p_value), float(min_p), method, len(datasets))


# ---------------------------------------------------------------------------
# Verdicts


VERDICTS = {
    "support": "supports the hypothesis (one-sided p < {alpha:g})",
    "direction_not_significant": "in the hypothesised direction, not significant",
    "not_supported": "not supported (ρ is not in the hypothesised direction)",
    "no_power": "cannot reach p < {alpha:g} at this n: no evidence either way",
    "untestable": "untestable (ρ undefined: too few points or a constant variable)",
}


def verdict(test: RankTest, alternative: str = "greater") -> str:
    """One of VERDICTS' keys. Power comes before significance: with min_p ≥ α nothing can count."""
    if not test.defined:
        return "untestable"
    if not test.can_reach_alpha:
        return "no_power"
    if test.p_one_sided < ALPHA:
        return "support"
    if ALTERNATIVES[alternative] * test.statistic > 0:
        return "direction_not_significant"
    return "not_supported"


def verdict_text(code: str) -> str:
    return VERDICTS[code].format(alpha=ALPHA)


# ---------------------------------------------------------------------------
# Bootstrap


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float, int]:
    """(low, high, number of finite values) of the percentile interval; nan without values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan, 0
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high), int(values.size)


def resample_units(matrix: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Rows (units, e.g. seeds) of matrix[U, ...] drawn with replacement: [draws, U, ...]."""
    picks = rng.integers(0, matrix.shape[0], size=(draws, matrix.shape[0]))
    return matrix[picks]


# ---------------------------------------------------------------------------
# Score summaries and small helpers


def sem(values: np.ndarray) -> float:
    """Standard error of the mean; nan with fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return math.nan
    return float(values.std(ddof=1) / math.sqrt(values.size))


def summarise_scores(kept: pd.DataFrame) -> pd.DataFrame:
    """Per group × task × rate × decoding: mean and SEM over seeds of each partition's
    score and of use_target, and the number of seeds."""
    keys = ["group", "task_id", "task_name", "s_only_rate", "decoding"]
    columns = list(PARTITIONS) + ["use_target"]
    grouped = kept.groupby(keys, sort=True)
    summary = grouped[columns].mean()
    errors = grouped[columns].agg(sem)
    summary = summary.join(errors.add_suffix("_sem"))
    summary["n_seeds"] = grouped.size()
    return summary.reset_index()


def evidence_required(rates: np.ndarray, mean_use: np.ndarray, threshold: float) -> float:
    """The smallest rate at which mean use_target reaches `threshold` (≥); inf if never
    within the grid (ranked after every rate); rates whose mean is nan are skipped."""
    order = np.argsort(rates)
    for rate, use in zip(np.asarray(rates, dtype=np.float64)[order], np.asarray(mean_use, dtype=np.float64)[order]):
        if np.isfinite(use) and use >= threshold:
            return float(rate)
    return math.inf


# ---------------------------------------------------------------------------
# Logistic fit (figure b)


@dataclasses.dataclass(frozen=True)
class LogisticFit:
    """use_target ≈ 1 / (1 + exp(−slope · (ln x − ln midpoint))), x = relative extractability."""

    slope: float
    midpoint: float

    def __call__(self, relative_extractability: np.ndarray) -> np.ndarray:
        return _logistic(np.log(relative_extractability), self.slope, math.log(self.midpoint))


def _logistic(log_x: np.ndarray, slope: float, log_midpoint: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(slope * (log_x - log_midpoint), -60, 60)))


def fit_logistic(relative_extractability: np.ndarray, use_target: np.ndarray) -> LogisticFit | None:
    """Least-squares logistic fit in log relative extractability; None when it cannot be fitted."""
    log_x = np.log(np.asarray(relative_extractability, dtype=np.float64))
    use_target = np.asarray(use_target, dtype=np.float64)
    finite = np.isfinite(log_x) & np.isfinite(use_target)
    log_x, use_target = log_x[finite], use_target[finite]
    if log_x.size < MIN_POINTS or np.ptp(log_x) == 0:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", scipy.optimize.OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            (slope, log_midpoint), _ = scipy.optimize.curve_fit(
                _logistic, log_x, use_target, p0=(1.0, float(np.median(log_x))), maxfev=5000
            )
    except (RuntimeError, ValueError, scipy.optimize.OptimizeWarning):
        return None
    if not (np.isfinite(slope) and np.isfinite(log_midpoint)) or abs(log_midpoint) > 50:
        return None
    return LogisticFit(float(slope), float(math.exp(log_midpoint)))
