"""Loading and validating run directories (docs/run_directory.md is the contract).

This module reads only files: `manifest.json`, `results.csv`, `curves.csv` and
`extractability.csv`. Every problem with them raises `ReportError` with a one-line
message that names the file, so a broken run directory fails loudly before any
statistics are computed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlbias_jax.partitions import PARTITIONS  # re-exported for the report

DECODINGS = ("sample", "greedy")
RUN_KEYS = ("task_id", "task_name", "s_only_rate", "seed")
# Defaults of config.py, for run directories whose config predates a field.
DEFAULT_FAILED_NEITHER_THRESHOLD = 0.0
DEFAULT_USE_TARGET_THRESHOLD = 0.9
DEFAULT_BEHAVIOUR_THRESHOLD = 0.8
DEFAULT_MIN_ACCURACY = 0.9
DEFAULT_H1_INCLUDE_CENSORED = False
# The model section's keys that identify a model: runs of the same task on the same model are replicates.
MODEL_IDENTITY = ("source", "architecture", "n_layer", "n_head", "d_model")


class ReportError(ValueError):
    """Bad input to the report: a missing or corrupt table, or runs that cannot be combined."""


# Required columns and their kinds ("int", "float", "str"); other columns are kept as they are.
RESULTS_COLUMNS = {
    "task_id": "int",
    "task_name": "str",
    "s_only_rate": "float",
    "seed": "int",
    "decoding": "str",
    "partition": "str",
    "score": "float",
    "status": "str",
}
CURVES_COLUMNS = {
    "task_id": "int",
    "task_name": "str",
    "s_only_rate": "float",
    "seed": "int",
    "iteration": "int",
    "env/reward_mean": "float",
}
EXTRACTABILITY_COLUMNS = {
    "task_id": "int",
    "task_name": "str",
    "probe_mode": "str",
    "layer": "int",
    "relative_extractability": "float",
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One run directory, validated. `group` names the run in pooled statistics."""

    path: Path
    group: str
    manifest: dict[str, Any]
    results: pd.DataFrame
    curves: pd.DataFrame | None
    extractability: pd.DataFrame | None
    notes: tuple[str, ...] = ()
    baseline: pd.DataFrame | None = None  # baseline.csv: the untrained policies' scores (optional)

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def experiment(self) -> str:
        return str(self.manifest.get("experiment", "unknown"))

    @property
    def is_partial(self) -> bool:
        return self.status != "complete"

    @property
    def config(self) -> dict[str, Any]:
        config = self.manifest.get("config")
        return config if isinstance(config, dict) else {}

    def config_value(self, section: str, key: str, default: Any) -> Any:
        return config_value(self.config, section, key, default)

    @property
    def model(self) -> str:
        """The model's identity (MODEL_IDENTITY of the model section), e.g. 'random gpt2 4×256, 4 heads'."""
        model = self.config.get("model")
        model = model if isinstance(model, dict) else {}
        source, architecture, n_layer, n_head, d_model = (model.get(key, "?") for key in MODEL_IDENTITY)
        return f"{source} {architecture} {n_layer}×{d_model}, {n_head} heads"

    @property
    def min_accuracy(self) -> float:
        return float(self.config_value("probe", "min_accuracy", DEFAULT_MIN_ACCURACY))


def config_value(config: dict[str, Any], section: str, key: str, default: Any) -> Any:
    """config[section][key], or `default` when the run's config has no such field."""
    table = config.get(section)
    if isinstance(table, dict) and table.get(key) is not None:
        return table[key]
    return default


# ---------------------------------------------------------------------------
# Reading


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / "manifest.json"
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory")
    if not file.is_file():
        raise ReportError(f"{file}: missing (not a run directory?)")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{file}: corrupt JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise ReportError(f"{file}: corrupt (expected a JSON object)")
    for key in ("experiment", "status"):
        if key not in manifest:
            raise ReportError(f"{file}: corrupt (no '{key}' field)")
    return manifest


def _read_table(file: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Read a CSV and coerce the required columns; any failure names the file."""
    try:
        table = pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ReportError(f"{file}: corrupt CSV ({str(error).strip().splitlines()[0]})") from None
    missing = [name for name in columns if name not in table.columns]
    if missing:
        raise ReportError(f"{file}: corrupt (missing columns {', '.join(missing)})")
    if table.empty:
        raise ReportError(f"{file}: empty (no rows)")
    for name, kind in columns.items():
        table[name] = _coerce_column(table[name], kind, file, name)
    return table


def _coerce_column(column: pd.Series, kind: str, file: Path, name: str) -> pd.Series:
    if kind == "str":
        if column.isna().any():
            raise ReportError(f"{file}: corrupt (empty values in column '{name}')")
        return column.astype(str).str.strip()
    numbers = pd.to_numeric(column, errors="coerce")
    bad = numbers.isna() & column.notna()
    if bad.any():
        raise ReportError(f"{file}: corrupt (non-numeric value {column[bad].iloc[0]!r} in column '{name}')")
    if kind == "int":
        if numbers.isna().any() or not np.all(np.mod(numbers, 1) == 0):
            raise ReportError(f"{file}: corrupt (column '{name}' must hold integers)")
        return numbers.astype(np.int64)
    return numbers.astype(np.float64)


def _validate_results(results: pd.DataFrame, file: Path) -> pd.DataFrame:
    unknown = sorted(set(results["partition"]) - set(PARTITIONS))
    if unknown:
        raise ReportError(f"{file}: corrupt (unknown partition {unknown[0]!r}; expected {', '.join(PARTITIONS)})")
    unknown = sorted(set(results["decoding"]) - set(DECODINGS))
    if unknown:
        raise ReportError(f"{file}: corrupt (unknown decoding {unknown[0]!r}; expected {', '.join(DECODINGS)})")
    unknown = sorted(set(results["status"]) - {"ok", "failed"})
    if unknown:
        raise ReportError(f"{file}: corrupt (unknown status {unknown[0]!r}; expected ok or failed)")
    if "failed_iteration" not in results.columns:
        results["failed_iteration"] = -1
    results["failed_iteration"] = results["failed_iteration"].fillna(-1).astype(np.int64)
    keys = ["task_id", "s_only_rate", "seed", "decoding", "partition"]
    duplicated = results.duplicated(keys)
    if duplicated.any():
        row = results[duplicated].iloc[0]
        raise ReportError(f"{file}: corrupt (duplicate row for {_describe(row)}, partition {row['partition']})")
    counts = results.groupby(["task_id", "s_only_rate", "seed", "decoding"])["partition"].nunique()
    if (counts < len(PARTITIONS)).any():
        task_id, rate, seed, decoding = counts[counts < len(PARTITIONS)].index[0]
        raise ReportError(
            f"{file}: corrupt (task {task_id}, rate {rate:g}, seed {seed}, {decoding} lacks some of the partitions {', '.join(PARTITIONS)})"
        )
    unusable = (results["status"] == "ok") & ~np.isfinite(results["score"])
    if unusable.any():
        row = results[unusable].iloc[0]
        raise ReportError(f"{file}: corrupt (non-finite score with status ok for {_describe(row)})")
    if results[["s_only_rate"]].lt(0).any().any() or results["s_only_rate"].gt(1).any():
        raise ReportError(f"{file}: corrupt (s_only_rate outside [0, 1])")
    return results


def _describe(row: pd.Series) -> str:
    return f"task {row['task_id']}, rate {row['s_only_rate']:g}, seed {row['seed']}, {row.get('decoding', '')}".rstrip(", ")


# ---------------------------------------------------------------------------
# Censored extractability (SPEC §8)


def censoring(accuracy_s: float, accuracy_t: float, min_accuracy: float) -> str:
    """Why a row is censored ("" when it is not): a probe whose held-out accuracy is below
    `min_accuracy` did not learn its feature (Lovering's control), so its MDL is a floor.
    The probing code writes the same rule into extractability.csv (`censored`, `censored_reason`)."""
    reasons = [
        f"{probe}-probe accuracy {accuracy:.2f} < {min_accuracy:.2f}"
        for probe, accuracy in (("s", accuracy_s), ("t", accuracy_t))
        if accuracy < min_accuracy
    ]
    return "; ".join(reasons)


def _boolean_column(column: pd.Series, file: Path) -> pd.Series:
    words = column.astype(str).str.strip().str.lower()
    bad = ~words.isin(["true", "false", "1", "0"])
    if bad.any():
        raise ReportError(f"{file}: corrupt (non-boolean value {column[bad].iloc[0]!r} in column 'censored')")
    return words.isin(["true", "1"])


def mark_censored(table: pd.DataFrame, min_accuracy: float, file: Path) -> tuple[pd.DataFrame, str]:
    """`table` with boolean `censored` and text `censored_reason`, and a note for the report.

    Tables written by the probing code carry the columns; older ones get them from
    accuracy_s / accuracy_t and the run's probe.min_accuracy; without accuracies no row is censored.
    """
    table = table.copy()
    if "censored" in table.columns:
        table["censored"] = _boolean_column(table["censored"], file)
        reasons = table["censored_reason"] if "censored_reason" in table.columns else pd.Series("", index=table.index)
        table["censored_reason"] = reasons.astype(object).where(reasons.notna(), "").astype(str)
        return table, ""
    if {"accuracy_s", "accuracy_t"} <= set(table.columns):
        table["censored_reason"] = [
            censoring(float(s), float(t), min_accuracy) for s, t in zip(table["accuracy_s"], table["accuracy_t"])
        ]
        table["censored"] = table["censored_reason"] != ""
        return table, f"extractability.csv has no 'censored' column: censoring computed from the probe accuracies (probe.min_accuracy = {min_accuracy:g})."
    table["censored"] = False
    table["censored_reason"] = ""
    return table, "extractability.csv has no probe accuracies: censoring cannot be checked."



def load_run(path: Path | str) -> Run:
    """Read and validate one run directory.

    `manifest.json` and `results.csv` are required. `extractability.csv` is optional
    (probing off). `curves.csv` is required for a complete run and optional for a
    partial one. Raises `ReportError` naming the file on any problem.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    partial = manifest.get("status") != "complete"
    notes: list[str] = []

    results_file = path / "results.csv"
    if not results_file.is_file():
        detail = f" (run status {manifest.get('status')!r}: no RL results yet)" if partial else ""
        raise ReportError(f"{results_file}: missing{detail}")
    results = _validate_results(_read_table(results_file, RESULTS_COLUMNS), results_file)

    curves = None
    curves_file = path / "curves.csv"
    if curves_file.is_file():
        curves = _read_table(curves_file, CURVES_COLUMNS)
    elif partial:
        notes.append("curves.csv is missing (partial run): no training curves.")
    else:
        raise ReportError(f"{curves_file}: missing (the run's status is 'complete')")

    extractability = None
    extractability_file = path / "extractability.csv"
    if extractability_file.is_file():
        extractability = _read_table(extractability_file, EXTRACTABILITY_COLUMNS)
        if (extractability["relative_extractability"] <= 0).any():
            raise ReportError(f"{extractability_file}: corrupt (relative_extractability must be > 0)")
        config = manifest.get("config")
        min_accuracy = float(config_value(config if isinstance(config, dict) else {}, "probe", "min_accuracy", DEFAULT_MIN_ACCURACY))
        extractability, note = mark_censored(extractability, min_accuracy, extractability_file)
        if note:
            notes.append(note)
    else:
        notes.append("extractability.csv is missing (run made with probing off): H1 cannot be tested.")

    baseline = None
    baseline_file = path / "baseline.csv"
    if baseline_file.is_file():
        baseline = _validate_results(_read_table(baseline_file, RESULTS_COLUMNS), baseline_file)

    group = str(manifest.get("name") or path.name)
    return Run(path, group, manifest, results, curves, extractability, tuple(notes), baseline)


def check_compatible(runs: list[Run]) -> None:
    """Runs are pooled as groups (one per run); refuse combinations that make no sense."""
    if not runs:
        raise ReportError("no run directories given")
    experiments = sorted({run.experiment for run in runs})
    if len(experiments) > 1:
        listing = ", ".join(f"{run.group}={run.experiment}" for run in runs)
        raise ReportError(
            f"cannot pool runs of different experiment kinds ({listing}); report each kind separately"
        )
    seen: dict[str, Path] = {}
    for run in runs:
        if run.group in seen:
            raise ReportError(
                f"two run directories have the same run name {run.group!r} ({seen[run.group]}, {run.path}); groups would be ambiguous"
            )
        seen[run.group] = run.path


# ---------------------------------------------------------------------------
# Per-run scores and filters


def run_scores(run: Run) -> pd.DataFrame:
    """`scores_by_run` of the run's results, with the run's group as the first column."""
    table = scores_by_run(run.results)
    table.insert(0, "group", run.group)
    return table


def scores_by_run(results: pd.DataFrame) -> pd.DataFrame:
    """One row per RL run and decoding in `results` (rows as in results.csv): score per
    partition, use_target, task_name, failed_iteration, status; sorted by task, rate, seed, decoding.

    use_target = (score(s_only) + score(t_only)) / 2 (SPEC §2).
    """
    wide = results.pivot_table(
        index=["task_id", "s_only_rate", "seed", "decoding"], columns="partition", values="score", aggfunc="first", dropna=False
    )
    wide = wide.reindex(columns=list(PARTITIONS))
    wide.columns.name = None
    meta = results.groupby(["task_id", "s_only_rate", "seed", "decoding"]).agg(
        task_name=("task_name", "first"),
        failed=("status", lambda status: bool((status == "failed").any())),
        failed_iteration=("failed_iteration", "max"),
    )
    # inner: pivot_table(dropna=False) spans every task × rate × seed × decoding, also combinations never run
    table = wide.join(meta, how="inner").reset_index()
    table["use_target"] = (table["s_only"] + table["t_only"]) / 2
    table["status"] = np.where(table["failed"], "failed", "ok")
    return table.drop(columns="failed")


@dataclasses.dataclass(frozen=True)
class FilteredScores:
    kept: pd.DataFrame  # rows (run × decoding) that enter the statistics
    failed: pd.DataFrame  # one row per RL run with a numerical fault
    dropped: pd.DataFrame  # one row per RL run whose judged score is below the threshold


def failed_filter_rule(experiment: str) -> str:
    """The score the failed-run filter judges: the toy policy must solve both training
    partitions (PPO's constant policies score 0 on one of them); the NL filter is the paper's."""
    return "neither" if experiment == "nl" else "min(both, neither)"


def filter_runs(scores: pd.DataFrame, failed_neither_threshold: float, experiment: str = "toy") -> FilteredScores:
    """Exclude numerically failed runs, then drop runs that never learned the task.

    A run is one (task, rate, seed). It is dropped when its judged score (toy:
    min(both, neither); NL: neither, as Cruz et al.) is below the threshold; the score
    is read from the `sample` decoding when present (the headline decoding), else from
    greedy, and the run is dropped from every decoding (SPEC §6).
    """
    run_keys = ["group", "task_id", "s_only_rate", "seed"]
    failed_mask = scores["status"] == "failed"
    failed = (
        scores[failed_mask]
        .groupby(run_keys, as_index=False)
        .agg(task_name=("task_name", "first"), failed_iteration=("failed_iteration", "max"))
    )
    healthy = scores[~failed_mask]
    reference = healthy.sort_values("decoding", key=lambda d: d.map({"sample": 0, "greedy": 1})).drop_duplicates(run_keys)
    judged = reference["neither"] if experiment == "nl" else reference[["both", "neither"]].min(axis=1)
    below = reference[judged < failed_neither_threshold].copy()
    below["judged_score"] = judged[judged < failed_neither_threshold].to_numpy()
    below["judged_by"] = failed_filter_rule(experiment)
    dropped = below[run_keys + ["task_name", "decoding", "judged_score", "judged_by"]].rename(columns={"decoding": "judged_on"})
    marked = healthy.merge(below[run_keys], on=run_keys, how="left", indicator=True)
    kept = marked[marked["_merge"] == "left_only"].drop(columns="_merge")
    return FilteredScores(kept.reset_index(drop=True), failed.reset_index(drop=True), dropped.reset_index(drop=True))


# ---------------------------------------------------------------------------
# Extractability


def select_extractability(run: Run) -> tuple[pd.DataFrame | None, str]:
    """Relative extractability per task for H1, and a sentence saying which rows were used.

    Uses the run's configured probe mode (`config.probe.mode`) at layer -1; falls
    back, with a note, to another mode or to the deepest layer when those rows are absent.
    """
    table = run.extractability
    if table is None:
        return None, "no extractability.csv"
    wanted = str(run.config_value("probe", "mode", "policy"))
    modes = list(dict.fromkeys(table["probe_mode"]))
    mode = wanted if wanted in modes else modes[0]
    note = f"probe mode '{mode}'"
    if mode != wanted:
        note += f" (the configured mode '{wanted}' has no rows)"
    rows = table[table["probe_mode"] == mode]
    if (rows["layer"] == -1).any():
        rows = rows[rows["layer"] == -1]
        note += ", layer -1"
    else:
        deepest = int(rows["layer"].max())
        rows = rows[rows["layer"] == deepest]
        note += f", layer {deepest} (no layer -1 rows)"
    if rows["task_id"].duplicated().any():
        raise ReportError(f"{run.path / 'extractability.csv'}: corrupt (several rows for one task at {note})")
    columns = ["task_id", "task_name", "relative_extractability", "censored", "censored_reason"]
    if "relative_extractability_sem" in rows.columns:
        columns.append("relative_extractability_sem")
    selected = rows[columns].copy()
    if "relative_extractability_sem" not in selected.columns:
        selected["relative_extractability_sem"] = np.nan
    selected.insert(0, "group", run.group)
    selected["probe_mode"] = mode
    return selected.reset_index(drop=True), note
