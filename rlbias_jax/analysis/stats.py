"""Statistics of SPEC §7: score summaries, H1 and H2.

- H1: Spearman ρ between relative extractability MDL(s)/MDL(t) and feature use
  `use_target`, across tasks, at the lowest s-only rate (p = 0, Cruz et al.) and
  averaged over rates (Lovering et al.), with a bootstrap interval over tasks and
  seeds and a logistic fit for the figure.
- H2: per task, Spearman ρ between the s-only rate and `use_target`, and the
  evidence required: the smallest rate at which mean `use_target` reaches a threshold.

Small samples are the rule here (4–5 tasks), so the p-value of ρ is exact (all
permutations) for n ≤ 8; scipy's t approximation would give p = 0 for ρ = 1 at n = 4.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings

import numpy as np
import pandas as pd
import scipy.optimize
import scipy.stats

from rlbias_jax.analysis.tables import PARTITIONS

EXACT_PERMUTATION_MAX_N = 8
MIN_TASKS_FOR_RHO = 3
H1_SETTINGS = {
    "rate0": "at p = 0 (Cruz et al.)",
    "average": "averaged over p (Lovering et al.)",
}


# ---------------------------------------------------------------------------
# Correlation


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman ρ and its two-sided p-value; (nan, nan) when undefined.

    Undefined means fewer than 3 points or a constant variable. The p-value is the
    exact permutation p-value for n ≤ 8 and scipy's t approximation above.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman: x and y must be 1-D of equal length (got {x.shape} and {y.shape})")
    n = x.size
    if n < MIN_TASKS_FOR_RHO or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    rank_x = scipy.stats.rankdata(x)
    rank_y = scipy.stats.rankdata(y)
    rho = float(_pearson_rows(rank_x[None, :], rank_y[None, :])[0])
    if n <= EXACT_PERMUTATION_MAX_N:
        permuted = np.array(list(itertools.permutations(rank_y)))
        null = _pearson_rows(np.broadcast_to(rank_x, permuted.shape), permuted)
        p_value = float(np.mean(np.abs(null) >= abs(rho) - 1e-12))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_value = float(scipy.stats.spearmanr(x, y).pvalue)
    return rho, p_value


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of x with the same row of y; nan for constant rows."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (x * y).sum(axis=1) / denominator
    rho[denominator <= 1e-12] = np.nan
    return np.clip(rho, -1.0, 1.0)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row pair (average ranks for ties); nan where a row is constant."""
    return _pearson_rows(scipy.stats.rankdata(x, axis=1), scipy.stats.rankdata(y, axis=1))


# ---------------------------------------------------------------------------
# Score summaries


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


# ---------------------------------------------------------------------------
# H1: extractability vs feature use


@dataclasses.dataclass(frozen=True)
class TaskEvidence:
    """One task of one group: its relative extractability and use_target per rate and seed."""

    group: str
    task_id: int
    task_name: str
    relative_extractability: float
    relative_extractability_sem: float
    use_by_rate: dict[float, np.ndarray]  # rate -> use_target of each kept seed
    lowest_rate: float  # the lowest rate of the group's grid (0 in a standard sweep)

    def has(self, setting: str) -> bool:
        """Whether the task has kept runs for `setting` (all runs at the lowest rate may have been dropped)."""
        return self.lowest_rate in self.use_by_rate if setting == "rate0" else bool(self.use_by_rate)

    def rates(self, setting: str) -> list[float]:
        return [self.lowest_rate] if setting == "rate0" else sorted(self.use_by_rate)

    def feature_use(self, setting: str) -> float:
        """use_target at the lowest rate ("rate0") or the mean over rates of the seed means ("average")."""
        return float(np.mean([self.use_by_rate[rate].mean() for rate in self.rates(setting)]))

    def feature_use_sem(self, setting: str) -> float:
        if setting == "rate0":
            return sem(self.use_by_rate[self.lowest_rate])
        # Independent runs per rate: the SEM of a mean of means.
        errors = [sem(values) for values in self.use_by_rate.values()]
        return float(math.sqrt(np.sum(np.square(errors))) / len(errors))

    def runs(self, setting: str) -> int:
        return int(sum(self.use_by_rate[rate].size for rate in self.rates(setting)))


def task_evidence(
    kept: pd.DataFrame, extractability: pd.DataFrame, decoding: str, lowest_rates: dict[str, float]
) -> list[TaskEvidence]:
    """Join kept runs (one decoding) with relative extractability; tasks without either are left out.

    `lowest_rates` gives each group's lowest s-only rate (from all its runs, kept or not).
    """
    rows = kept[kept["decoding"] == decoding]
    tasks = []
    for (group, task_id), task_rows in rows.groupby(["group", "task_id"], sort=True):
        match = extractability[(extractability["group"] == group) & (extractability["task_id"] == task_id)]
        if match.empty:
            continue
        use_by_rate = {
            float(rate): rate_rows["use_target"].to_numpy(dtype=np.float64)
            for rate, rate_rows in task_rows.groupby("s_only_rate", sort=True)
        }
        tasks.append(
            TaskEvidence(
                group=str(group),
                task_id=int(task_id),
                task_name=str(task_rows["task_name"].iloc[0]),
                relative_extractability=float(match["relative_extractability"].iloc[0]),
                relative_extractability_sem=float(match["relative_extractability_sem"].iloc[0]),
                use_by_rate=use_by_rate,
                lowest_rate=float(lowest_rates[group]),
            )
        )
    return tasks


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
    if log_x.size < MIN_TASKS_FOR_RHO or np.ptp(log_x) == 0:
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


@dataclasses.dataclass(frozen=True)
class Correlation:
    rho: float
    p_value: float
    n: int  # points correlated (tasks)
    n_runs: int  # RL runs behind them
    ci_low: float
    ci_high: float
    n_boot_valid: int  # bootstrap resamples where ρ was defined

    @property
    def defined(self) -> bool:
        return math.isfinite(self.rho)


@dataclasses.dataclass(frozen=True)
class H1Result:
    scope: str  # a group name or "pooled"
    setting: str  # "rate0" | "average"
    points: pd.DataFrame  # one row per task: group, task, x, x_sem, use, use_sem, runs
    correlation: Correlation
    fit: LogisticFit | None
    left_out: tuple[str, ...] = ()  # tasks without kept runs for this setting


def bootstrap_spearman(
    tasks: list[TaskEvidence], setting: str, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, int]:
    """Percentile interval of ρ, resampling tasks and, within each task and rate, seeds.

    Returns (low, high, resamples with a defined ρ). Resamples where ρ is undefined
    (e.g. every draw is the same task) are left out.
    """
    if len(tasks) < MIN_TASKS_FOR_RHO:
        return math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    resampled_use = np.empty((n_boot, len(tasks)))
    for index, task in enumerate(tasks):
        rate_means = []
        for rate in task.rates(setting):
            values = task.use_by_rate[rate]
            draws = rng.integers(0, values.size, size=(n_boot, values.size))
            rate_means.append(values[draws].mean(axis=1))
        resampled_use[:, index] = np.mean(rate_means, axis=0)
    picks = rng.integers(0, len(tasks), size=(n_boot, len(tasks)))
    extractability = np.array([task.relative_extractability for task in tasks])[picks]
    use = np.take_along_axis(resampled_use, picks, axis=1)
    rhos = spearman_rows(extractability, use)
    rhos = rhos[np.isfinite(rhos)]
    if rhos.size == 0:
        return math.nan, math.nan, 0
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(rhos, [tail, 100 - tail])
    return float(low), float(high), int(rhos.size)


def h1(tasks: list[TaskEvidence], scope: str, setting: str, n_boot: int = 2000, seed: int = 0) -> H1Result:
    """Spearman ρ (exact p for small n), bootstrap interval and logistic fit for one scope."""
    left_out = tuple(f"{task.group}: {task.task_name}" for task in tasks if not task.has(setting))
    tasks = [task for task in tasks if task.has(setting)]
    points = pd.DataFrame(
        {
            "group": [task.group for task in tasks],
            "task_id": [task.task_id for task in tasks],
            "task_name": [task.task_name for task in tasks],
            "relative_extractability": [task.relative_extractability for task in tasks],
            "relative_extractability_sem": [task.relative_extractability_sem for task in tasks],
            "use_target": [task.feature_use(setting) for task in tasks],
            "use_target_sem": [task.feature_use_sem(setting) for task in tasks],
            "runs": [task.runs(setting) for task in tasks],
        }
    )
    rho, p_value = spearman(points["relative_extractability"].to_numpy(), points["use_target"].to_numpy())
    low, high, valid = bootstrap_spearman(tasks, setting, n_boot=n_boot, seed=seed)
    correlation = Correlation(rho, p_value, len(tasks), int(points["runs"].sum()), low, high, valid)
    fit = fit_logistic(points["relative_extractability"].to_numpy(), points["use_target"].to_numpy())
    return H1Result(scope, setting, points, correlation, fit, left_out)


# ---------------------------------------------------------------------------
# H2: evidence vs feature use


def evidence_required(rates: np.ndarray, mean_use: np.ndarray, threshold: float) -> float | None:
    """The smallest rate at which mean use_target reaches `threshold` (≥); None if never."""
    order = np.argsort(rates)
    for rate, use in zip(np.asarray(rates)[order], np.asarray(mean_use)[order]):
        if use >= threshold:
            return float(rate)
    return None


def h2(kept: pd.DataFrame, decoding: str, thresholds: dict[str, float]) -> pd.DataFrame:
    """Per group × task: Spearman ρ between s-only rate and use_target over kept runs
    (one point per run), and the evidence required at the group's threshold."""
    rows = []
    for (group, task_id), task_rows in kept[kept["decoding"] == decoding].groupby(["group", "task_id"], sort=True):
        rho, p_value = spearman(task_rows["s_only_rate"].to_numpy(), task_rows["use_target"].to_numpy())
        means = task_rows.groupby("s_only_rate")["use_target"].mean()
        threshold = thresholds[group]
        rows.append(
            {
                "group": group,
                "task_id": int(task_id),
                "task_name": str(task_rows["task_name"].iloc[0]),
                "rho": rho,
                "p_value": p_value,
                "n_runs": len(task_rows),
                "n_rates": int(means.size),
                "use_target_at_lowest": float(means.iloc[0]),
                "use_target_at_highest": float(means.iloc[-1]),
                "threshold": threshold,
                "evidence_required": evidence_required(means.index.to_numpy(), means.to_numpy(), threshold),
                "max_rate": float(means.index.max()),
            }
        )
    return pd.DataFrame(rows)
