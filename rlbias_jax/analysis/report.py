"""`write_report`: run directories in, report.md + report.html + stats.json + behaviour.csv + figures out.

`analyse` turns validated runs into numbers: scores, filters, the behaviour of every
run (analysis.behaviour) and the tests of H1 and H2 (analysis.hypotheses) as one
JSON-ready document. `write_report` writes that document to stats.json and renders
the report's statistics from the file it wrote, so the report can never say
something stats.json does not. `build_blocks` makes one document rendered twice
(Markdown and HTML).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd

from rlbias_jax.analysis import behaviour as behaviours
from rlbias_jax.analysis import algorithms, figures, hypotheses
from rlbias_jax.analysis.document import Alert, Block, Code, Heading, Image, Paragraph, Table, to_html, to_markdown
from rlbias_jax.analysis.hypotheses import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, H1_VIEWS, POOLED
from rlbias_jax.analysis.stats import ALPHA, EXACT_MAX_N, PERMUTATIONS, summarise_scores
from rlbias_jax.analysis.tables import (
    DEFAULT_BEHAVIOUR_THRESHOLD,
    DEFAULT_FAILED_NEITHER_THRESHOLD,
    DEFAULT_H1_INCLUDE_CENSORED,
    DEFAULT_USE_TARGET_THRESHOLD,
    PARTITIONS,
    FilteredScores,
    ReportError,
    Run,
    check_compatible,
    failed_filter_rule,
    filter_runs,
    load_run,
    run_scores,
    select_extractability,
)

BEHAVIOUR_COLUMNS = [
    "run", "task_id", "task_name", "s_only_rate", "seed", "decoding", *PARTITIONS,
    "behaviour", "use_target", "use_spurious", "in_feature_use", "excluded_by",
]


@dataclasses.dataclass(frozen=True)
class Thresholds:
    failed_neither: float  # failed-run filter (toy: min(both, neither); NL: neither)
    use_target: float  # evidence required
    behaviour: float  # τ of the behaviour classes
    min_accuracy: float  # probe.min_accuracy (censoring)


@dataclasses.dataclass(frozen=True)
class Analysis:
    runs: list[Run]
    thresholds: dict[str, Thresholds]  # per group (run)
    filtered: FilteredScores
    behaviour: pd.DataFrame  # one row per run × decoding: BEHAVIOUR_COLUMNS (run = group) + group, model
    summary: pd.DataFrame  # per group × task × rate × decoding, kept runs
    decodings: list[str]  # headline first
    extractability: pd.DataFrame | None  # the rows used for H1, all groups (with censored, censored_reason)
    extractability_notes: dict[str, str]  # group -> which probe mode / layer was used
    include_censored: bool
    stats: dict  # stats.json

    @property
    def headline_decoding(self) -> str:
        return self.decodings[0]

    @property
    def experiment(self) -> str:
        return self.runs[0].experiment  # check_compatible: all runs share it

    @property
    def several_groups(self) -> bool:
        return len(self.runs) > 1

    @property
    def headline_scope(self) -> str:
        return POOLED if self.several_groups else self.runs[0].group


# ---------------------------------------------------------------------------
# Numbers


def _thresholds(run: Run, failed_neither: float | None, use_target: float | None) -> Thresholds:
    if failed_neither is None:
        failed_neither = float(run.config_value("eval", "failed_neither_threshold", DEFAULT_FAILED_NEITHER_THRESHOLD))
    if use_target is None:
        use_target = float(run.config_value("eval", "use_target_threshold", DEFAULT_USE_TARGET_THRESHOLD))
    behaviour = float(run.config_value("eval", "behaviour_threshold", DEFAULT_BEHAVIOUR_THRESHOLD))
    return Thresholds(failed_neither, use_target, behaviour, run.min_accuracy)


def behaviour_table(
    runs: list[Run], scores: dict[str, pd.DataFrame], thresholds: dict[str, Thresholds], filtered: FilteredScores
) -> pd.DataFrame:
    """Every run × decoding (`scores`: run_scores per group) with its behaviour, use_target,
    use_spurious and whether it enters feature use."""
    parts = []
    for run in runs:
        part = scores[run.group].copy()
        part["behaviour"] = behaviours.classify_runs(part, thresholds[run.group].behaviour)
        part["model"] = run.model
        part["algorithm"] = algorithms.run_algorithm(run.config)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    table["use_spurious"] = behaviours.use_spurious(table["s_only"], table["t_only"])
    run_keys = ["group", "task_id", "s_only_rate", "seed"]
    dropped = table.merge(filtered.dropped[run_keys].assign(_dropped=True), on=run_keys, how="left")["_dropped"].eq(True)
    learned = table["behaviour"].isin(behaviours.LEARNED)
    table["excluded_by"] = ""
    table.loc[~learned, "excluded_by"] = "behaviour"
    table.loc[dropped.to_numpy(), "excluded_by"] = "filter"
    table.loc[table["status"] == "failed", "excluded_by"] = "failed"
    table["in_feature_use"] = table["excluded_by"] == ""
    table["run"] = table["group"]
    return table


def analyse(
    runs: list[Run],
    *,
    failed_neither_threshold: float | None = None,
    use_target_threshold: float | None = None,
    include_censored: bool | None = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Analysis:
    """All numbers of the report; each run directory is one group, pooled when there are several.

    `include_censored` defaults to True only when every run's config sets eval.h1_include_censored.
    """
    check_compatible(runs)
    thresholds = {run.group: _thresholds(run, failed_neither_threshold, use_target_threshold) for run in runs}
    scores = {run.group: run_scores(run) for run in runs}
    parts = [filter_runs(scores[run.group], thresholds[run.group].failed_neither, run.experiment) for run in runs]
    filtered = FilteredScores(
        *(pd.concat([getattr(part, name) for part in parts], ignore_index=True) for name in ("kept", "failed", "dropped"))
    )
    if filtered.kept.empty:
        raise ReportError("no usable runs: every run failed or was dropped by the failed-run filter")
    present = set(filtered.kept["decoding"])
    decodings = [d for d in ("sample", "greedy") if d in present]
    table = behaviour_table(runs, scores, thresholds, filtered)

    selected, notes = [], {}
    for run in runs:
        rows, note = select_extractability(run)
        notes[run.group] = note
        if rows is not None:
            selected.append(rows)
    extractability = pd.concat(selected, ignore_index=True) if selected else None
    if include_censored is None:
        include_censored = all(bool(run.config_value("eval", "h1_include_censored", DEFAULT_H1_INCLUDE_CENSORED)) for run in runs)

    settings = {
        "runs": {
            run.group: {
                "path": str(run.path),
                "model": run.model,
                "behaviour_threshold": thresholds[run.group].behaviour,
                "use_target_threshold": thresholds[run.group].use_target,
                "failed_run_filter": f"{failed_filter_rule(run.experiment)} < {thresholds[run.group].failed_neither:g}",
                "min_accuracy": thresholds[run.group].min_accuracy,
                "extractability": notes[run.group],
            }
            for run in runs
        }
    }
    document = hypotheses.stats_document(
        table, extractability, decodings, {group: t.use_target for group, t in thresholds.items()},
        include_censored, settings, n_boot=n_boot, seed=seed,
    )
    document["censored"] = _censored_rows(extractability)
    document["behaviour_counts"] = _behaviour_counts(table)
    return Analysis(
        runs, thresholds, filtered, table, summarise_scores(filtered.kept), decodings, extractability, notes,
        include_censored, json.loads(json.dumps(document)),
    )


def _censored_rows(extractability: pd.DataFrame | None) -> list[dict]:
    if extractability is None:
        return []
    rows = extractability[extractability["censored"]]
    return [
        {"run": r.group, "task_id": int(r.task_id), "task_name": r.task_name, "probe_mode": r.probe_mode,
         "relative_extractability": float(r.relative_extractability), "reason": r.censored_reason}
        for r in rows.itertuples()
    ]


def _behaviour_counts(table: pd.DataFrame) -> list[dict]:
    counted = behaviours.counts(table, ["group", "decoding", "task_id", "task_name", "s_only_rate"])
    return [
        {key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()}
        for row in counted.rename(columns={"group": "run"}).to_dict("records")
    ]


# ---------------------------------------------------------------------------
# Formatting


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _mean_sem(mean: float | None, error: float | None) -> str:
    if error is None or not math.isfinite(error):
        return _number(mean)
    return f"{mean:.2f} ± {error:.2f}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if value >= 0.001 else f"{value:.1e}"


def _p_with_method(test: dict) -> str:
    if test["p_one_sided"] is None:
        return "–"
    kind = "exact" if test["p_method"].startswith("exact") else "permutation"
    return f"{_p(test['p_one_sided'])} ({kind})"


def _interval(test: dict) -> str:
    if test.get("ci_low") is None or test.get("ci_high") is None:
        return "–"
    return f"[{test['ci_low']:.2f}, {test['ci_high']:.2f}]"


def _rate(value: float | None, never: bool = False) -> str:
    if never:
        return "never"
    return "–" if value is None else f"{value:g}"


def _task_label(analysis: Analysis, group: str, task_name: str) -> str:
    return figures.task_label(group, task_name, analysis.several_groups)


def _point_label(label: str, analysis: Analysis) -> str:
    """Point labels are 'group: task'; a single run's report shows the task name only."""
    return label if analysis.several_groups else label.split(": ", 1)[-1]


def _tests(stats: dict, test: str, scope: str | None = None, decoding: str | None = None) -> list[dict]:
    return [
        entry for entry in stats["tests"]
        if entry["test"] == test and (scope is None or entry["scope"] == scope) and (decoding is None or entry["decoding"] == decoding)
    ]


# ---------------------------------------------------------------------------
# Plain-words summary (from stats.json)


def _power_text(test: dict) -> str:
    if test["can_reach_alpha"] or test["min_p"] is None:
        return ""
    return f"; with n = {test['n']} the smallest possible one-sided p is {_p(test['min_p'])}, so this test cannot reach p < {ALPHA:g}"


def _test_sentence(test: dict, analysis: Analysis) -> str:
    if test["rho"] is None:
        return f"{test['feature_use_text']}: ρ is undefined (n = {test['n']}; fewer than 3 points or a constant variable), untestable"
    direction = "ρ > 0" if test["alternative"] == "greater" else "ρ < 0"
    text = (
        f"{test['feature_use_text']}: Spearman ρ = {test['rho']:.2f} (hypothesis {direction}), one-sided p = {_p_with_method(test)}, "
        f"n = {test['n']} (task, model) points from {test['n_runs']} learned runs, "
        f"{int(test.get('ci_level', 0.95) * 100)} % bootstrap CI {_interval(test)}{_power_text(test)} → **{test['verdict_text']}**"
    )
    return text


def _h1_summary(analysis: Analysis) -> str:
    stats, decoding, scope = analysis.stats, analysis.headline_decoding, analysis.headline_scope
    tests = {entry["feature_use"]: entry for entry in _tests(stats, "H1", scope, decoding)}
    if analysis.extractability is None:
        return (
            "H1 (extractability) is not tested: no run has an extractability.csv (probing was off), so there is "
            "nothing to correlate feature use with."
        )
    scope_text = "all runs pooled" if scope == POOLED else f"run {scope}"
    primary = tests["rate0"]
    text = (
        f"H1 (more extractable target → more use of the target; pre-registered one-sided), {scope_text}, {decoding} decoding. "
        f"Primary test, {_test_sentence(primary, analysis)}. "
        + " ".join(f"Also {_test_sentence(tests[view], analysis)}." for view in ("average", "evidence_required"))
    )
    censored = primary["censored"]
    if censored and not analysis.include_censored:
        listed = "; ".join(f"{_point_label(c['label'], analysis)} ({c['reason']})" for c in censored)
        text += f" Left out of H1 because their extractability is censored: {listed}."
    elif censored:
        text += f" {len(censored)} censored point(s) are included (eval.h1_include_censored = true): their ratios are floors, not values."
    if primary["left_out"]:
        text += f" Left out for want of learned runs at the lowest rate: {', '.join(_point_label(l, analysis) for l in primary['left_out'])}."
    return text


def _h2_summary(analysis: Analysis) -> str:
    decoding, scope = analysis.headline_decoding, analysis.headline_scope
    test = _tests(analysis.stats, "H2", scope, decoding)[0]
    rows = analysis.behaviour[(analysis.behaviour["decoding"] == decoding)]
    if scope != POOLED:
        rows = rows[rows["group"] == scope]
    excluded = rows["behaviour"].value_counts()
    counted = ", ".join(f"{int(excluded.get(name, 0))} {name.replace('_', ' ')}" for name in ("constant", "not_learned", "failed"))
    text = (
        "H2 (more s-only evidence → more use of the target), counting target use only: the fraction of target users (all four "
        "partitions high) among the runs that learned the task (behaviour target, spurious or mixed); "
        f"{counted} run(s) are excluded, so a constant policy's use_target = 0.5 is never read as target use, and neither is a "
        "spurious policy's rising s-only score. "
    )
    if test["rho"] is None:
        text += (
            f"No task has a defined within-task ρ (n = {test['n']}: the share of target users does not vary with the rate in "
            "any task), so H2 is **untestable** with these runs."
        )
    else:
        text += (
            f"Mean within-task Spearman ρ(s-only rate, target user) = {test['rho']:.2f} over {test['n']} task(s), one-sided p = "
            f"{_p(test['p_one_sided'])} ({'exact' if test['p_method'].startswith('exact') else 'permutation'}, rates permuted within seeds), "
            f"{int(test['ci_level'] * 100)} % bootstrap CI {_interval(test)}"
            f"{_power_text(test)} → **{test['verdict_text']}**."
        )
    reached = [t for t in test["tasks"] if t["evidence_required"] is not None]
    if reached:
        text += " Evidence required (mean use_target ≥ threshold): " + ", ".join(
            f"{_point_label(t['label'], analysis)} at p = {t['evidence_required']:g}" for t in reached
        ) + "."
    never = [t for t in test["tasks"] if t["evidence_never"]]
    if never:
        text += f" Never within the grid: {', '.join(_point_label(t['label'], analysis) for t in never)}."
    return text


def _behaviour_summary(analysis: Analysis) -> str:
    decoding = analysis.headline_decoding
    rows = analysis.behaviour[analysis.behaviour["decoding"] == decoding]
    counts = rows["behaviour"].value_counts()
    listed = ", ".join(f"{int(counts.get(name, 0))} {name.replace('_', ' ')}" for name in (*behaviours.BEHAVIOURS, behaviours.FAILED))
    taus = ", ".join(sorted({f"{t.behaviour:g}" for t in analysis.thresholds.values()}))
    return f"Behaviour of the {len(rows)} trained runs ({decoding} decoding, τ = {taus}): {listed} (per task and rate below)."


def summary_paragraphs(analysis: Analysis) -> list[str]:
    paragraphs = [_behaviour_summary(analysis), _h1_summary(analysis), _h2_summary(analysis)]
    seeds = analysis.summary[analysis.summary["decoding"] == analysis.headline_decoding]["n_seeds"]
    seeds_text = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    trust = (
        f"How much to trust this: each task × rate cell averages {seeds_text} kept seed(s); "
        f"{len(analysis.filtered.failed)} run(s) failed numerically and {len(analysis.filtered.dropped)} were dropped by the failed-run filter "
        "(listed below). All statistics are in stats.json; read ρ together with n, the smallest attainable p and the interval."
    )
    if any(run.is_partial for run in analysis.runs):
        trust += " The run is **PARTIAL**: these numbers may change when it completes."
    paragraphs.append(trust)
    return paragraphs


# ---------------------------------------------------------------------------
# Sections


def _partial_alerts(analysis: Analysis) -> list[Block]:
    blocks = []
    for run in analysis.runs:
        if not run.is_partial:
            continue
        configured = run.config_value("task", "task_ids", None)
        completed = run.manifest.get("tasks_completed")
        detail = f" Tasks completed: {completed}" if completed is not None else ""
        if configured is not None:
            detail += f" of {list(configured)}."
        blocks.append(
            Alert(
                f"**PARTIAL** — run `{run.group}` has status '{run.status}'.{detail} The report uses only the results that exist."
            )
        )
    return blocks


def _seconds(value) -> str:
    if value is None:
        return "–"
    value = float(value)
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def _curves_throughput(run: Run) -> str:
    if run.curves is None or "time/episodes_per_s" not in run.curves.columns:
        return "–"
    return f"{run.curves['time/episodes_per_s'].mean():.1f} (from curves.csv)"


def _runs_section(analysis: Analysis) -> list[Block]:
    overview, times, environment = [], [], []
    for run in analysis.runs:
        manifest, results = run.manifest, run.results
        git = str(manifest.get("git_sha") or "–")[:12] + (" (dirty)" if manifest.get("git_dirty") else "")
        thresholds = analysis.thresholds[run.group]
        overview.append(
            [
                run.group,
                run.experiment,
                f"**{run.status}**" if run.is_partial else run.status,
                run.model,
                ", ".join(str(t) for t in sorted(results["task_id"].unique())),
                ", ".join(f"{r:g}" for r in sorted(results["s_only_rate"].unique())),
                str(results["seed"].nunique()),
                f"{failed_filter_rule(run.experiment)} < {thresholds.failed_neither:g}; τ = {thresholds.behaviour:g}; "
                f"use_target ≥ {thresholds.use_target:g}; probe accuracy ≥ {thresholds.min_accuracy:g}",
                git,
            ]
        )
        phases = manifest.get("phases") or {}
        rl = phases.get("rl") or {}
        rate = rl.get("episodes_per_s")
        times.append(
            [
                run.group,
                str(manifest.get("started_at", "–")),
                str(manifest.get("finished_at", "–")),
                _seconds(manifest.get("wall_time_s")),
                "; ".join(f"{name} {_seconds((info or {}).get('wall_time_s'))}" for name, info in phases.items()) or "–",
                str(rl.get("episodes", "–")),
                _number(float(rate), 1) if rate is not None else _curves_throughput(run),
            ]
        )
        devices = ", ".join(f"{d.get('platform', '?')}/{d.get('kind', '?')}" for d in manifest.get("devices") or []) or "–"
        packages = ", ".join(f"{name} {version}" for name, version in (manifest.get("packages") or {}).items()) or "–"
        environment.append([run.group, str(manifest.get("python", "–")), str(manifest.get("platform", "–")), devices, packages])
    return [
        Heading(2, "Runs"),
        Table(
            ["run", "experiment", "status", "model", "tasks", "s-only rates", "seeds", "thresholds: failed-run filter; behaviour τ; evidence; probes", "git"],
            overview,
        ),
        Heading(3, "Run times and throughput"),
        Table(["run", "started", "finished", "wall time", "phases", "RL episodes", "RL episodes / s"], times),
        Heading(3, "Environment"),
        Table(["run", "python", "platform", "devices", "packages"], environment),
    ]


def _excluded_section(analysis: Analysis) -> list[Block]:
    failed, dropped = analysis.filtered.failed, analysis.filtered.dropped
    blocks: list[Block] = [Heading(2, "Excluded runs")]
    if failed.empty:
        blocks.append(Paragraph("No run failed numerically (status `failed` in results.csv)."))
    else:
        blocks.append(Paragraph(f"{len(failed)} run(s) failed numerically (NaN/inf during training) and are excluded:"))
        rows = [
            [_task_label(analysis, r.group, r.task_name), f"{r.s_only_rate:g}", str(r.seed), str(r.failed_iteration)]
            for r in failed.itertuples()
        ]
        blocks.append(Table(["task", "s-only rate", "seed", "failed at iteration"], rows))
    rules = "; ".join(sorted({f"{failed_filter_rule(run.experiment)} < {analysis.thresholds[run.group].failed_neither:g}" for run in analysis.runs}))
    if dropped.empty:
        blocks.append(Paragraph(f"No run was dropped by the failed-run filter ({rules})."))
    else:
        blocks.append(
            Paragraph(
                f"{len(dropped)} run(s) never learned the task and are dropped by the failed-run filter ({rules}; the toy "
                "judges min(both, neither) because PPO's constant policies solve one of the two; NL judges neither, as Cruz et al.):"
            )
        )
        rows = [
            [
                _task_label(analysis, r.group, r.task_name),
                f"{r.s_only_rate:g}",
                str(r.seed),
                f"{r.judged_by} = {r.judged_score:.3f} ({r.judged_on})",
                f"{analysis.thresholds[r.group].failed_neither:g}",
            ]
            for r in dropped.itertuples()
        ]
        blocks.append(Table(["task", "s-only rate", "seed", "judged score (decoding)", "threshold"], rows))
    return blocks


def _behaviour_section(analysis: Analysis) -> list[Block]:
    taus = ", ".join(sorted({f"{t.behaviour:g}" for t in analysis.thresholds.values()}))
    blocks: list[Block] = [
        Heading(2, "Behaviour of the trained runs"),
        Paragraph(
            f"Each run is classified from its four test scores (eval.behaviour_threshold τ = {taus}; high: ≥ τ, low: ≤ 1 − τ), "
            "in this order, the first match winning: **constant** (both and t-only low, neither and s-only high, or the reverse: "
            "one answer whatever the prompt, PPO's 75 %-reward trap); **not learned** (both or neither below τ); **target** "
            "(all four high); **spurious** (both and neither high, s-only and t-only low); **mixed** (anything else). A constant "
            "policy is also 'not learned'; it is named first so that traps are visible. Only target, spurious and mixed runs "
            "enter the statistics of H1 and H2. behaviour.csv lists every run with use_target = (s-only + t-only) / 2 and "
            "use_spurious = ((1 − s-only) + (1 − t-only)) / 2 = 1 − use_target (both are 0.5 for a constant policy)."
        ),
    ]
    columns = [*behaviours.BEHAVIOURS, behaviours.FAILED]
    for decoding in analysis.decodings:
        rows = [
            [_task_label(analysis, r["run"], r["task_name"]), f"{r['s_only_rate']:g}", *(str(r[name]) for name in columns)]
            for r in analysis.stats["behaviour_counts"]
            if r["decoding"] == decoding
        ]
        blocks.append(Heading(3, f"Runs per behaviour, {decoding} decoding"))
        blocks.append(Table(["task", "s-only rate", *(name.replace("_", " ") for name in columns)], rows))
    return blocks


def _scores_section(analysis: Analysis) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Scores per task and s-only rate"),
        Paragraph(
            "Mean ± SEM over the kept seeds of the test score per partition; use_target = (s-only + t-only) / 2. "
            "A policy that uses the target scores high on both s-only and t-only."
        ),
    ]
    for decoding in analysis.decodings:
        rows = analysis.summary[analysis.summary["decoding"] == decoding]
        table_rows = [
            [_task_label(analysis, r["group"], r["task_name"]), f"{r['s_only_rate']:g}", str(r["n_seeds"])]
            + [_mean_sem(r[name], r[f"{name}_sem"]) for name in (*PARTITIONS, "use_target")]
            for _, r in rows.iterrows()
        ]
        blocks.append(Heading(3, f"{decoding} decoding"))
        blocks.append(Table(["task", "s-only rate", "seeds", *PARTITIONS, "use_target"], table_rows))
    return blocks


def _baseline_section(analysis: Analysis) -> list[Block]:
    """Mean score per task and partition before and after training (runs with baseline.csv)."""
    rows = []
    decoding = analysis.headline_decoding
    for run in analysis.runs:
        if run.baseline is None:
            continue
        before = run.baseline[run.baseline["decoding"] == decoding].groupby(["task_id", "task_name", "partition"])["score"].mean()
        after = run.results[run.results["decoding"] == decoding].groupby(["task_id", "task_name", "partition"])["score"].mean()
        for task_id, task_name in sorted({(t, n) for t, n, _ in after.index}):
            cells = [
                f"{before.get((task_id, task_name, part), float('nan')):.2f} → {after[(task_id, task_name, part)]:.2f}"
                if (task_id, task_name, part) in after.index else "–"
                for part in PARTITIONS
            ]
            rows.append([_task_label(analysis, run.group, task_name), *cells])
    if not rows:
        return []
    return [
        Heading(2, "Before and after training"),
        Paragraph(
            f"Mean test score per partition ({decoding} decoding) of the untrained policies (baseline.csv) → the trained "
            "ones (results.csv), over all rates and seeds, failed runs included. Training works when both and neither rise."
        ),
        Table(["task", *PARTITIONS], rows),
    ]


def _h1_table(analysis: Analysis) -> Table:
    rows = []
    for test in _tests(analysis.stats, "H1"):
        fit = test["fit"]
        rows.append(
            [
                test["scope"],
                test["decoding"],
                test["feature_use_text"],
                "ρ > 0" if test["alternative"] == "greater" else "ρ < 0",
                str(test["n"]),
                str(test["n_runs"]),
                _number(test["rho"]),
                _p_with_method(test),
                _p(test["min_p"]),
                _interval(test) + (f" ({test['n_boot_valid']} valid)" if test["n_boot_valid"] else ""),
                test["verdict_text"],
                f"slope {fit['slope']:.2f}, midpoint {fit['midpoint']:.3g}" if fit else "–",
            ]
        )
    return Table(
        ["scope", "decoding", "feature use", "hypothesis", "n points", "learned runs", "ρ", "one-sided p", "smallest possible p", "95 % CI", "verdict", "logistic fit"],
        rows,
    )


def _h1_section(analysis: Analysis, figure_paths: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "H1: relative extractability vs use of the target")]
    if analysis.extractability is None:
        return blocks + [Paragraph("Skipped: no run directory has an extractability.csv (the runs were made with probing off).")]
    used = "; ".join(f"{group}: {note}" for group, note in analysis.extractability_notes.items())
    blocks.append(
        Paragraph(
            "Pre-registered one-sided Spearman tests across (task, model) points of MDL(s)/MDL(t) against feature use: "
            "use_target at the lowest s-only rate (Cruz et al.; the primary test) and averaged over rates (Lovering et al.), "
            "both expecting ρ > 0; and Lovering's second view, the evidence required against MDL(s)/MDL(t), expecting ρ < 0 "
            "(\"never\" ranks after every rate). Feature use counts only runs that learned the task (target, spurious or mixed). "
            f"p is exact (every ordering) for n ≤ {EXACT_MAX_N}, else from {PERMUTATIONS} random orderings; the smallest possible p "
            "shows whether a test can be significant at all. The interval is a percentile bootstrap "
            f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) over points and, within points, seeds. Run directories "
            "of the same task on the same model (model section: source, architecture, n_layer, n_head, d_model) are replicates: "
            f"pooled into one point. Extractability rows used: {used}."
        )
    )
    blocks.append(_h1_table(analysis))
    blocks += _censored_blocks(analysis)
    headline = {t["feature_use"]: t for t in _tests(analysis.stats, "H1", analysis.headline_scope, analysis.headline_decoding)}
    if any(test["points"] for test in headline.values()):
        table = []
        for view, test in headline.items():
            for point in test["points"]:
                y = "never" if point["y_never"] else _mean_sem(point["y"], point["y_sem"])
                table.append(
                    [_point_label(point["label"], analysis), H1_VIEWS[view][0], _mean_sem(point["x"], point["x_sem"]), y,
                     str(point["learned_runs"]), str(point["excluded_runs"])]
                )
        blocks += [
            Heading(3, "Points behind the headline tests"),
            Table(["point", "feature use", "MDL(s)/MDL(t)", "value", "learned runs", "excluded runs"], table),
        ]
    for key, alt in (("b", "(b) use_target vs relative extractability"), ("c", "(c) relative extractability per task")):
        if key in figure_paths:
            blocks.append(Image(figure_paths[key], alt))
    blocks += _extractability_table(analysis)
    return blocks


def _censored_blocks(analysis: Analysis) -> list[Block]:
    censored = analysis.stats["censored"]
    minimum = ", ".join(sorted({f"{t.min_accuracy:g}" for t in analysis.thresholds.values()}))
    if not censored:
        return [Paragraph(f"No extractability row used for H1 is censored (both probes reach probe.min_accuracy = {minimum}).")]
    handling = (
        "included in H1 anyway (eval.h1_include_censored = true)" if analysis.include_censored
        else "excluded from H1 (set eval.h1_include_censored = true to include them)"
    )
    rows = [
        [_task_label(analysis, c["run"], c["task_name"]), c["probe_mode"], _number(c["relative_extractability"], 3), c["reason"]]
        for c in censored
    ]
    return [
        Heading(3, "Censored extractability"),
        Paragraph(
            f"A probe whose held-out accuracy is below probe.min_accuracy ({minimum}) did not learn its feature: its MDL is near "
            f"the uniform codelength, a floor rather than a value, so the ratio is censored (SPEC §8). These rows are {handling}:"
        ),
        Table(["task", "probe mode", "MDL(s)/MDL(t)", "reason"], rows),
    ]


def _extractability_table(analysis: Analysis) -> list[Block]:
    rows = []
    for run in analysis.runs:
        if run.extractability is None:
            continue
        for _, r in run.extractability.iterrows():
            rows.append(
                [
                    _task_label(analysis, run.group, r["task_name"]),
                    str(r["probe_mode"]),
                    str(r["layer"]),
                    _mean_sem(r.get("mdl_s_bits", math.nan), r.get("mdl_s_sem", math.nan)),
                    _mean_sem(r.get("mdl_t_bits", math.nan), r.get("mdl_t_sem", math.nan)),
                    _mean_sem(r["relative_extractability"], r.get("relative_extractability_sem", math.nan)),
                    f"{_number(r.get('accuracy_s', math.nan))} / {_number(r.get('accuracy_t', math.nan))}",
                    str(r.get("n_seeds", "–")),
                    f"**yes**: {r['censored_reason']}" if r["censored"] else "no",
                ]
            )
    return [
        Heading(3, "All extractability measurements"),
        Table(["task", "probe mode", "layer", "MDL(s) bits", "MDL(t) bits", "MDL(s)/MDL(t)", "accuracy s / t", "probe seeds", "censored"], rows),
    ]


def _h2_section(analysis: Analysis, figure_paths: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "H2: evidence (s-only rate) vs use of the target"),
        Paragraph(
            "H2 counts target use only. Per task: Spearman ρ between the s-only rate and the target-user indicator (1 when all "
            "four partitions are high, 0 otherwise) over the runs that learned the task (target, spurious or mixed behaviour; "
            "constant and not-learned runs never count, so a constant policy's 0.5 is not evidence). use_target itself is not "
            "used here: at p > 0 the s-only partition is seen in training, so a spurious policy's use_target rises as it learns "
            "to reject s-only prompts while t-only stays at 0. The one-sided p-value (ρ > 0) comes from permuting the rates "
            "within seeds (the runs of one seed start from the same policy). "
            "The verdict per scope tests the mean within-task ρ the same way, permuting within every task's seeds at once; its "
            "interval resamples tasks and seeds. Evidence required: the smallest s-only rate at which the mean use_target of the "
            "learned runs reaches the threshold (\"never\": not within the grid)."
        ),
    ]
    for test in _tests(analysis.stats, "H2"):
        heading = f"{test['scope']}, {test['decoding']} decoding" if analysis.several_groups else f"{test['decoding']} decoding"
        blocks.append(Heading(3, heading))
        if test["rho"] is None:
            blocks.append(Paragraph(f"Mean within-task ρ: undefined (no task with a defined ρ) → **{test['verdict_text']}**."))
        else:
            blocks.append(
                Paragraph(
                    f"Mean within-task ρ = {test['rho']:.2f} over {test['n']} task(s), one-sided p = {_p_with_method(test)}, smallest "
                    f"possible p = {_p(test['min_p'])}, 95 % CI {_interval(test)} → **{test['verdict_text']}**."
                )
            )
        rows = [
            [
                _point_label(t["label"], analysis),
                _number(t["rho"]),
                _p_with_method(t),
                _p(t["min_p"]),
                str(t["learned_runs"]),
                str(t["excluded_runs"]),
                f"{_number(t['target_users_at_lowest'])} → {_number(t['target_users_at_highest'])}",
                f"{_number(t['use_at_lowest'])} → {_number(t['use_at_highest'])}",
                f"{t['threshold']:g}",
                _rate(t["evidence_required"], t["evidence_never"]),
                t["verdict_text"],
            ]
            for t in test["tasks"]
        ]
        blocks.append(
            Table(
                ["task", "ρ", "one-sided p", "smallest possible p", "learned runs", "excluded runs",
                 "target users, lowest → highest p", "use_target, lowest → highest p", "threshold", "evidence required", "verdict"],
                rows,
            )
        )
    for decoding in analysis.decodings:
        if f"a_{decoding}" in figure_paths:
            blocks.append(Image(figure_paths[f"a_{decoding}"], f"(a) score vs s-only rate, {decoding} decoding"))
    return blocks


def _curves_section(analysis: Analysis, figure_paths: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Training curves")]
    for run in analysis.runs:
        key = f"d_{run.group}"
        if key in figure_paths:
            blocks.append(Image(figure_paths[key], f"(d) training curves of {run.group}"))
        for note in run.notes:
            if "curves" in note:
                blocks.append(Paragraph(f"{run.group}: {note}"))
    return blocks


def _config_section(analysis: Analysis) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Configuration")]
    for run in analysis.runs:
        blocks.append(Paragraph(f"Run `{run.group}` (`{run.path}`):"))
        blocks.append(Code(json.dumps(run.config, indent=2, sort_keys=True), "json"))
    return blocks


def build_blocks(analysis: Analysis, figure_paths: dict[str, str]) -> list[Block]:
    names = ", ".join(run.group for run in analysis.runs)
    blocks: list[Block] = [Heading(1, f"rlbias report: {names}")]
    blocks += _partial_alerts(analysis)
    blocks.append(Heading(2, "Summary"))
    blocks += [Paragraph(text) for text in summary_paragraphs(analysis)]
    notes = [f"{run.group}: {note}" for run in analysis.runs for note in run.notes if "curves" not in note]
    blocks += [Paragraph(note) for note in notes]
    blocks += _runs_section(analysis)
    blocks += _excluded_section(analysis)
    blocks += _behaviour_section(analysis)
    blocks += _scores_section(analysis)
    blocks += _baseline_section(analysis)
    blocks += _h1_section(analysis, figure_paths)
    blocks += _h2_section(analysis, figure_paths)
    blocks += algorithms.section(analysis.stats, analysis.behaviour, analysis.decodings, figure_paths)
    blocks += _curves_section(analysis, figure_paths)
    blocks += _config_section(analysis)
    return blocks


# ---------------------------------------------------------------------------
# Figures and entry point


def _kept_curves(run: Run, kept: pd.DataFrame) -> pd.DataFrame | None:
    if run.curves is None:
        return None
    keys = kept[kept["group"] == run.group][["task_id", "s_only_rate", "seed"]].drop_duplicates()
    curves = run.curves.merge(keys, on=["task_id", "s_only_rate", "seed"], how="inner")
    return curves if not curves.empty else None


def write_figures(analysis: Analysis, directory: Path) -> dict[str, str]:
    """Draw every figure the data allow; returns key -> PNG path relative to the report."""
    paths: dict[str, str] = {}

    def keep(key: str, figure, stem: str) -> None:
        figures.save(figure, directory, stem)
        paths[key] = f"{directory.name}/{stem}.png"

    extractability = {}
    if analysis.extractability is not None:
        extractability = {
            (r.group, r.task_id): r.relative_extractability for r in analysis.extractability.itertuples()
        }
    for decoding in analysis.decodings:
        stem = "a_scores_vs_rate" if decoding == analysis.headline_decoding else f"a_scores_vs_rate_{decoding}"
        keep(f"a_{decoding}", figures.figure_scores_vs_rate(analysis.summary, extractability, decoding, analysis.experiment), stem)
    headline = [
        t for t in _tests(analysis.stats, "H1", analysis.headline_scope, analysis.headline_decoding) if t["feature_use"] != "evidence_required"
    ]
    drawable = [t for t in headline if t["points"] or any(c["y"] is not None for c in t["censored"])]
    if headline and len(drawable) == len(headline):
        keep("b", figures.figure_use_vs_extractability(headline, analysis.headline_decoding, analysis.experiment), "b_use_vs_extractability")
    if analysis.extractability is not None and not analysis.extractability.empty:
        notes = sorted(set(analysis.extractability_notes.values()) - {"no extractability.csv"})
        keep("c", figures.figure_extractability_bars(analysis.extractability, "; ".join(notes)), "c_relative_extractability")
    if algorithms.several_algorithms(analysis.stats):
        figure = algorithms.figure_use_by_algorithm(analysis.stats, analysis.headline_decoding, analysis.experiment)
        if figure is not None:
            keep(algorithms.FIGURE_KEY, figure, "e_use_vs_extractability_by_algorithm")
    for run in analysis.runs:
        curves = _kept_curves(run, analysis.filtered.kept)
        if curves is not None:
            stem = "d_training_curves" if not analysis.several_groups else f"d_training_curves_{_safe(run.group)}"
            keep(f"d_{run.group}", figures.figure_training_curves(curves, run.group), stem)
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_behaviour(analysis: Analysis, path: Path) -> None:
    """behaviour.csv: one row per run × decoding (BEHAVIOUR_COLUMNS)."""
    table = analysis.behaviour.sort_values(["run", "task_id", "s_only_rate", "seed", "decoding"])
    _write_atomically(path, table[BEHAVIOUR_COLUMNS].to_csv(index=False))


def write_report(
    run_dirs: list[Path],
    out_dir: Path | None = None,
    *,
    failed_neither_threshold: float | None = None,
    use_target_threshold: float | None = None,
    include_censored: bool | None = None,
) -> Path:
    """Write report.md, report.html, stats.json, behaviour.csv and figures/*.png|svg for one
    or more run directories.

    Each run directory is one group (e.g. one model); with several, H1 and H2 are reported
    per group and pooled (replicates of a (task, model) pooled first). Thresholds default
    to each run's config (eval.failed_neither_threshold, eval.use_target_threshold,
    eval.behaviour_threshold, probe.min_accuracy, eval.h1_include_censored). The report's
    statistics are rendered from the stats.json just written. Raises `ReportError` on bad
    input. Returns the path of report.md (in `out_dir`, default: the first run directory).
    """
    if not run_dirs:
        raise ReportError("no run directories given")
    for name, value in (("failed_neither_threshold", failed_neither_threshold), ("use_target_threshold", use_target_threshold)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ReportError(f"{name} must be a finite number (got {value!r})")
    runs = [load_run(Path(path)) for path in run_dirs]
    analysis = analyse(
        runs, failed_neither_threshold=failed_neither_threshold, use_target_threshold=use_target_threshold, include_censored=include_censored
    )
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dirs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_dir / "stats.json", json.dumps(analysis.stats, indent=2, allow_nan=False) + "\n")
    write_behaviour(analysis, out_dir / "behaviour.csv")
    analysis = dataclasses.replace(analysis, stats=json.loads((out_dir / "stats.json").read_text(encoding="utf-8")))
    figure_paths = write_figures(analysis, out_dir / "figures")
    blocks = build_blocks(analysis, figure_paths)
    title = f"rlbias report: {', '.join(run.group for run in runs)}"
    report = out_dir / "report.md"
    _write_atomically(report, to_markdown(blocks))
    _write_atomically(out_dir / "report.html", to_html(blocks, title))
    return report


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
