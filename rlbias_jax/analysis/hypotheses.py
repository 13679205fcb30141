"""H1 and H2 as pre-registered one-sided tests, written as one JSON-ready document (stats.json).

Feature use. A run's `use_target` is evidence about which feature it uses only when
the run learned the task: its behaviour (analysis.behaviour) is target, spurious or
mixed. Constant and not-learned runs (and failed or filtered ones) are left out of
every statistic below and counted instead; a cell with no learned run is missing, so
PPO's constant trap (use_target = 0.5) can never count as target use.

H2 counts target use only: its y is the run's *target-user indicator* (1 when the
behaviour is target, i.e. all four partitions high, 0 for spurious or mixed). At
p > 0 the s-only partition has been seen in training, so use_target can rise because
a spurious policy learns to reject s-only prompts (s_only up, t_only still 0), as the
toy_default runs do; only generalising to the unseen t-only partition as well counts as
using the target.

Points. A point is one (task, model). Within one run directory (a "group") it is one
task. Pooled over run directories, runs of the same task name on the same model
(Run.model: the model section's source, architecture, n_layer, n_head, d_model) are
replicates of one point: their seeds are pooled as units, their relative
extractabilities averaged, so n counts distinct (task, model) points.

Tests, per scope (each group, and "pooled" when there are several) and decoding:

- H1, feature use vs relative extractability MDL(s)/MDL(t), alternative ρ > 0:
  `rate0` (use at the lowest s-only rate, Cruz et al.) and `average` (mean over rates
  of the per-rate mean, Lovering et al.);
- H1, Lovering's second view: evidence required (the smallest rate whose mean use
  reaches eval.use_target_threshold; never = beyond the grid) vs relative
  extractability, alternative ρ < 0;
- H2, within each task Spearman ρ(s-only rate, target-user indicator) over learned
  runs, with the rates permuted within seeds (the runs of one seed share their initial policy);
  the scope's statistic is the mean ρ over tasks, alternative > 0.

Every test has n, ρ, a one-sided p (exact for small n), the smallest p it could give
(min_p: "no power" when ≥ α), a percentile bootstrap interval resampling points and,
within points, units (seeds), and a verdict.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd

from rlbias_jax.analysis import algorithms, stats
from rlbias_jax.analysis.behaviour import LEARNED
from rlbias_jax.analysis.tables import ReportError

POOLED = "pooled"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
H1_VIEWS = {
    "rate0": ("use_target at the lowest s-only rate (Cruz et al.)", "greater"),
    "average": ("use_target averaged over s-only rates (Lovering et al.)", "greater"),
    "evidence_required": ("evidence required: smallest s-only rate with mean use_target ≥ threshold (Lovering et al.)", "less"),
}
FEATURE_USE_RULE = (
    "H1: use_target = (s_only + t_only) / 2 of runs whose behaviour is target, spurious or mixed; "
    "H2: the fraction of those runs whose behaviour is target; "
    "constant, not_learned, failed and filtered runs are excluded and counted"
)


@dataclasses.dataclass(frozen=True)
class Point:
    """One (task, model): use_target of its learned runs per unit (group × seed) and rate."""

    label: str
    task_id: int
    task_name: str
    model: str
    groups: tuple[str, ...]
    rates: np.ndarray  # float[R], ascending
    use: np.ndarray  # float[U, R]: use_target; nan where the unit has no learned run at that rate
    target: np.ndarray  # float[U, R]: 1 where that run's behaviour is target, else 0; nan as `use`
    excluded_runs: int  # runs of this point not in `use` (failed, filtered, constant, not learned)
    threshold: float  # eval.use_target_threshold, for evidence required
    relative_extractability: float = math.nan
    relative_extractability_sem: float = math.nan
    censored: bool = False
    censored_reason: str = ""

    @property
    def learned_runs(self) -> int:
        return int(np.isfinite(self.use).sum())


# ---------------------------------------------------------------------------
# Feature use of a point (vectorised over leading resample axes)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices are nan, as intended
        return np.nanmean(values, axis=axis)


def feature_use(use: np.ndarray, rates: np.ndarray, view: str, threshold: float) -> np.ndarray:
    """A view's y for use[..., U, R] (nan where no learned run): rate0, average or evidence_required."""
    per_rate = _nanmean(use, axis=-2)  # [..., R]
    if view == "rate0":
        return per_rate[..., 0]
    if view == "average":
        return _nanmean(per_rate, axis=-1)
    reached = np.nan_to_num(per_rate, nan=-np.inf) >= threshold
    first = np.argmax(reached, axis=-1)
    required = np.where(reached.any(axis=-1), rates[first], np.inf)
    return np.where(np.isfinite(per_rate).any(axis=-1), required, np.nan)


def feature_use_sem(point: Point, view: str) -> float:
    """SEM over units of a view's y (nan for evidence required and with fewer than two runs)."""
    if view == "evidence_required":
        return math.nan
    columns = [0] if view == "rate0" else range(point.rates.size)
    errors = [stats.sem(point.use[:, r][np.isfinite(point.use[:, r])]) for r in columns]
    errors = [e for e in errors if math.isfinite(e)]
    if view == "rate0" or not errors:
        return errors[0] if errors else math.nan
    return float(math.sqrt(np.sum(np.square(errors))) / len(errors))  # mean of independent rate means


# ---------------------------------------------------------------------------
# Points


def build_points(runs: pd.DataFrame, extractability: pd.DataFrame | None, thresholds: dict[str, float], pooled: bool) -> list[Point]:
    """Points of one scope from the behaviour table of one decoding (`runs`: one row per run).

    pooled=False: one point per (group, task); pooled=True: one per (model, task name),
    replicates pooled. `thresholds`: eval.use_target_threshold per group.
    """
    # runs of different algorithms are never replicates (analysis.algorithms)
    keys = [k for k in ("model", "algorithm", "task_name") if k in runs.columns] if pooled else ["group", "task_name"]
    points = []
    for _, rows in runs.groupby(keys, sort=False):
        groups = tuple(dict.fromkeys(rows["group"]))
        rates = np.sort(rows["s_only_rate"].unique())
        units = list(dict.fromkeys(zip(rows["group"], rows["seed"])))
        use = np.full((len(units), rates.size), np.nan)
        target = np.full((len(units), rates.size), np.nan)
        learned = rows[rows["in_feature_use"]]
        for group, seed, rate, value, kind in zip(
            learned["group"], learned["seed"], learned["s_only_rate"], learned["use_target"], learned["behaviour"]
        ):
            cell = units.index((group, seed)), np.searchsorted(rates, rate)
            use[cell] = value
            target[cell] = float(kind == "target")
        values = {thresholds[group] for group in groups}
        if len(values) > 1:
            raise ReportError(f"replicates {', '.join(groups)} of task {rows['task_name'].iloc[0]!r} use different eval.use_target_threshold values")
        label = f"{'+'.join(groups)}: {rows['task_name'].iloc[0]}"
        point = Point(
            label=label,
            task_id=int(rows["task_id"].iloc[0]),
            task_name=str(rows["task_name"].iloc[0]),
            model=str(rows["model"].iloc[0]),
            groups=groups,
            rates=rates,
            use=use,
            target=target,
            excluded_runs=int(len(rows) - len(learned)),
            threshold=values.pop(),
        )
        points.append(_with_extractability(point, extractability))
    return points


def _with_extractability(point: Point, extractability: pd.DataFrame | None) -> Point:
    """Attach relative extractability: the mean over uncensored replicates (all, flagged, if every one is censored)."""
    if extractability is None:
        return point
    rows = extractability[extractability["group"].isin(point.groups) & (extractability["task_id"] == point.task_id)]
    if rows.empty:
        return point
    modes = sorted(set(rows["probe_mode"]))
    if len(modes) > 1:
        raise ReportError(f"replicates {', '.join(point.groups)} of task {point.task_name!r} were probed in different modes ({', '.join(modes)})")
    censored = bool(rows["censored"].all())
    used = rows if censored else rows[~rows["censored"]]
    errors = used["relative_extractability_sem"].to_numpy(dtype=np.float64)
    reasons = [f"{g}: {r}" if len(point.groups) > 1 else r for g, r, c in zip(rows["group"], rows["censored_reason"], rows["censored"]) if c]
    return dataclasses.replace(
        point,
        relative_extractability=float(used["relative_extractability"].mean()),
        relative_extractability_sem=float(math.sqrt(np.sum(np.square(errors))) / len(errors)),
        censored=censored,
        censored_reason="; ".join(reasons),
    )


# ---------------------------------------------------------------------------
# Bootstrap


def _bootstrap_h1(points: list[Point], view: str, n_boot: int, seed: int) -> tuple[float, float, int]:
    """Percentile interval of ρ(x, y): resample points, and within each drawn point its units."""
    rng = np.random.default_rng(seed)
    n = len(points)
    draws = np.empty((n_boot, n, n))  # [resample, slot, point]: y of each point, one unit resample per slot
    for index, point in enumerate(points):
        resampled = stats.resample_units(point.use, n_boot * n, rng).reshape(n_boot, n, *point.use.shape)
        draws[:, :, index] = feature_use(resampled, point.rates, view, point.threshold)
    picks = rng.integers(0, n, size=(n_boot, n))
    x = np.array([point.relative_extractability for point in points])[picks]
    y = np.take_along_axis(draws, picks[:, :, None], axis=2)[:, :, 0]
    y = np.where(np.isnan(y).any(axis=1, keepdims=True), np.nan, y)  # a point without data spoils the resample
    return stats.percentile_interval(stats.spearman_rows(x, y), CI_LEVEL)


def _bootstrap_h2(points: list[Point], n_boot: int, seed: int) -> tuple[float, float, int]:
    """Percentile interval of the mean within-task ρ(rate, target user): resample tasks, and seeds within tasks."""
    rng = np.random.default_rng(seed)
    n = len(points)
    rhos = np.empty((n_boot, n, n))
    for index, point in enumerate(points):
        resampled = stats.resample_units(point.target, n_boot * n, rng)  # [B·n, U, R]
        rates = np.broadcast_to(point.rates, resampled.shape)
        flat = (-1, resampled.shape[1] * resampled.shape[2])
        rhos[:, :, index] = stats.masked_spearman_rows(rates.reshape(flat), resampled.reshape(flat)).reshape(n_boot, n)
    picks = rng.integers(0, n, size=(n_boot, n))
    chosen = np.take_along_axis(rhos, picks[:, :, None], axis=2)[:, :, 0]
    return stats.percentile_interval(_nanmean(chosen, axis=1), CI_LEVEL)


# ---------------------------------------------------------------------------
# Tests


def _number(value: float) -> float | None:
    """JSON-safe: None for nan and infinities."""
    return float(value) if value is not None and math.isfinite(value) else None


def _test_fields(test: stats.RankTest, alternative: str, interval: tuple[float, float, int]) -> dict:
    code = stats.verdict(test, alternative)
    return {
        "n": test.n,
        "rho": _number(test.statistic),
        "p_one_sided": _number(test.p_one_sided),
        "p_method": test.method,
        "min_p": _number(test.min_p),
        "can_reach_alpha": test.can_reach_alpha,
        "ci_low": _number(interval[0]),
        "ci_high": _number(interval[1]),
        "ci_level": CI_LEVEL,
        "n_boot_valid": interval[2],
        "verdict": code,
        "verdict_text": stats.verdict_text(code),
    }


def h1_test(points: list[Point], scope: str, decoding: str, view: str, include_censored: bool,
            n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """One H1 test (one view) as a stats.json entry."""
    description, alternative = H1_VIEWS[view]
    measured = [p for p in points if math.isfinite(p.relative_extractability)]
    censored = [p for p in measured if p.censored]
    candidates = [p for p in measured if include_censored or not p.censored]
    ys = {p.label: float(feature_use(p.use, p.rates, view, p.threshold)) for p in measured}
    used = [p for p in candidates if not math.isnan(ys[p.label])]
    left_out = [p.label for p in candidates if math.isnan(ys[p.label])]
    x = np.array([p.relative_extractability for p in used])
    y = np.array([ys[p.label] for p in used])
    test = stats.spearman_test(x, y, alternative)
    interval = _bootstrap_h1(used, view, n_boot, seed) if test.defined else (math.nan, math.nan, 0)
    fit = stats.fit_logistic(x, y) if view != "evidence_required" and test.defined else None
    return {
        "test": "H1",
        "scope": scope,
        "decoding": decoding,
        "feature_use": view,
        "feature_use_text": description,
        "x": "relative extractability MDL(s)/MDL(t)",
        "alternative": alternative,
        **_test_fields(test, alternative, interval),
        "n_runs": int(sum(p.learned_runs for p in used)),
        "points": [
            {
                "label": p.label, "task_id": p.task_id, "task_name": p.task_name, "model": p.model, "groups": list(p.groups),
                "x": p.relative_extractability, "x_sem": _number(p.relative_extractability_sem),
                "y": _number(ys[p.label]), "y_never": math.isinf(ys[p.label]), "y_sem": _number(feature_use_sem(p, view)),
                "learned_runs": p.learned_runs, "excluded_runs": p.excluded_runs, "censored": p.censored,
            }
            for p in used
        ],
        "left_out": left_out,  # no learned run for this view
        "censored": [
            {"label": p.label, "reason": p.censored_reason, "included": include_censored, "x": p.relative_extractability, "y": _number(ys[p.label])}
            for p in censored
        ],
        "without_extractability": [p.label for p in points if not math.isfinite(p.relative_extractability)],
        "fit": {"slope": fit.slope, "midpoint": fit.midpoint} if fit else None,
    }


def _h2_task(point: Point) -> tuple[dict, tuple | None]:
    """Per-task H2 row and its (rates, target-user indicator, seeds) data when ρ is defined."""
    unit_index, rate_index = np.nonzero(np.isfinite(point.target))
    rates, target = point.rates[rate_index], point.target[unit_index, rate_index]
    test = stats.blocked_spearman_test(rates, target, unit_index)
    per_rate = _nanmean(point.use, axis=0)
    target_rate = _nanmean(point.target, axis=0)
    learned_rates = point.rates[np.isfinite(per_rate)]
    required = float(feature_use(point.use, point.rates, "evidence_required", point.threshold))
    row = {
        "label": point.label, "task_id": point.task_id, "task_name": point.task_name, "groups": list(point.groups),
        **_test_fields(test, "greater", (math.nan, math.nan, 0)),
        "learned_runs": point.learned_runs, "excluded_runs": point.excluded_runs,
        "rates_with_learned_runs": [float(r) for r in learned_rates],
        "use_at_lowest": _number(per_rate[np.isfinite(per_rate)][0]) if learned_rates.size else None,
        "use_at_highest": _number(per_rate[np.isfinite(per_rate)][-1]) if learned_rates.size else None,
        "target_users_at_lowest": _number(target_rate[np.isfinite(target_rate)][0]) if learned_rates.size else None,
        "target_users_at_highest": _number(target_rate[np.isfinite(target_rate)][-1]) if learned_rates.size else None,
        "threshold": point.threshold,
        "evidence_required": _number(required),
        "evidence_never": math.isinf(required),
    }
    for key in ("ci_low", "ci_high", "ci_level", "n_boot_valid"):
        row.pop(key)
    return row, ((rates, target, unit_index) if test.defined else None)


def h2_test(points: list[Point], scope: str, decoding: str, n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """H2 for one scope: per-task blocked tests, and the mean within-task ρ with its own test."""
    tasks, datasets, defined = [], [], []
    for point in points:
        row, data = _h2_task(point)
        tasks.append(row)
        if data is not None:
            datasets.append(data)
            defined.append(point)
    test = stats.mean_blocked_spearman_test(datasets)
    interval = _bootstrap_h2(defined, n_boot, seed) if defined else (math.nan, math.nan, 0)
    return {
        "test": "H2",
        "scope": scope,
        "decoding": decoding,
        "feature_use": "target_users",
        "feature_use_text": "target users (runs with all four partitions high) vs s-only rate, within tasks; mean ρ over tasks",
        "x": "s-only rate",
        "alternative": "greater",
        **_test_fields(test, "greater", interval),
        "n_runs": int(sum(p.learned_runs for p in defined)),
        "tasks": tasks,
        "left_out": [row["label"] for row in tasks if row["rho"] is None],  # ρ undefined: < 3 learned runs or no variation
    }


def stats_document(
    runs: pd.DataFrame,
    extractability: pd.DataFrame | None,
    decodings: list[str],
    thresholds: dict[str, float],
    include_censored: bool,
    settings: dict,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """All tests of every scope and decoding (the content of stats.json).

    `runs`: the behaviour table of every run (behaviour.csv plus group, model and
    in_feature_use); `thresholds`: eval.use_target_threshold per group.
    """
    groups = list(dict.fromkeys(runs["group"]))
    scopes = {group: (runs["group"] == group, False) for group in groups}
    if len(groups) > 1:
        scopes[POOLED] = (pd.Series(True, index=runs.index), True)
    scopes.update(algorithms.algorithm_scopes(runs))
    tests = []
    for decoding in decodings:
        for scope, (mask, pooled) in scopes.items():
            rows = runs[mask & (runs["decoding"] == decoding)]
            if rows.empty:
                continue
            points = build_points(rows, extractability, thresholds, pooled)
            scope_tests = [h1_test(points, scope, decoding, view, include_censored, n_boot, seed) for view in H1_VIEWS] if extractability is not None else []
            scope_tests.append(h2_test(points, scope, decoding, n_boot, seed))
            tests += [{**test, "algorithm": algorithms.scope_algorithm(rows)} for test in scope_tests]
    return {
        "schema": "rlbias_jax stats v1",
        "alpha": stats.ALPHA,
        "settings": {
            "feature_use": FEATURE_USE_RULE,
            "learned_behaviours": list(LEARNED),
            "h1_include_censored": include_censored,
            "exact_max_n": stats.EXACT_MAX_N,
            "permutations": stats.PERMUTATIONS,
            "permutation_seed": stats.PERMUTATION_SEED,
            "bootstrap_resamples": n_boot,
            "bootstrap_seed": seed,
            "ci_level": CI_LEVEL,
            "points": "one per (task, model); replicate run directories of a (task, model) are pooled first",
            **settings,
        },
        "tests": tests,
    }
