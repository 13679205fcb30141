"""`write_report`: run directories in, report.md + report.html + figures out (SPEC §7).

`analyse` turns validated runs into numbers (scores, filters, H1, H2); `build_blocks`
turns those numbers into one document that is rendered twice (Markdown and HTML).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd

from rlbias_jax.analysis import figures
from rlbias_jax.analysis.document import Alert, Block, Code, Heading, Image, Paragraph, Table, to_html, to_markdown
from rlbias_jax.analysis.stats import (
    EXACT_PERMUTATION_MAX_N,
    H1_SETTINGS,
    MIN_TASKS_FOR_RHO,
    H1Result,
    h1,
    h2,
    summarise_scores,
    task_evidence,
)
from rlbias_jax.analysis.tables import (
    DEFAULT_FAILED_NEITHER_THRESHOLD,
    DEFAULT_USE_TARGET_THRESHOLD,
    PARTITIONS,
    FilteredScores,
    ReportError,
    Run,
    check_compatible,
    filter_runs,
    load_run,
    run_scores,
    select_extractability,
)

POOLED = "pooled"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclasses.dataclass(frozen=True)
class Thresholds:
    failed_neither: float
    use_target: float


@dataclasses.dataclass(frozen=True)
class Analysis:
    runs: list[Run]
    thresholds: dict[str, Thresholds]  # per group (run)
    filtered: FilteredScores
    summary: pd.DataFrame  # per group × task × rate × decoding
    decodings: list[str]  # headline first
    extractability: pd.DataFrame | None  # the rows used for H1, all groups
    extractability_notes: dict[str, str]  # group -> which probe mode / layer was used
    h1: dict[str, dict[str, dict[str, H1Result]]]  # decoding -> scope -> setting -> result
    h2: dict[str, pd.DataFrame]  # decoding -> per-task table

    @property
    def headline_decoding(self) -> str:
        return self.decodings[0]

    @property
    def experiment(self) -> str:
        return self.runs[0].experiment  # check_compatible: all runs share it

    @property
    def several_groups(self) -> bool:
        return len(self.runs) > 1

    def headline_h1(self) -> dict[str, H1Result] | None:
        scopes = self.h1.get(self.headline_decoding, {})
        if POOLED in scopes:
            return scopes[POOLED]
        return next(iter(scopes.values()), None)


# ---------------------------------------------------------------------------
# Numbers


def _thresholds(run: Run, failed_neither: float | None, use_target: float | None) -> Thresholds:
    if failed_neither is None:
        failed_neither = float(run.config_value("eval", "failed_neither_threshold", DEFAULT_FAILED_NEITHER_THRESHOLD))
    if use_target is None:
        use_target = float(run.config_value("eval", "use_target_threshold", DEFAULT_USE_TARGET_THRESHOLD))
    return Thresholds(failed_neither, use_target)


def analyse(
    runs: list[Run],
    *,
    failed_neither_threshold: float | None = None,
    use_target_threshold: float | None = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Analysis:
    """All statistics of the report; each run is one group, pooled when there are several."""
    check_compatible(runs)
    thresholds = {run.group: _thresholds(run, failed_neither_threshold, use_target_threshold) for run in runs}
    parts = [filter_runs(run_scores(run), thresholds[run.group].failed_neither) for run in runs]
    filtered = FilteredScores(
        *(pd.concat([getattr(part, name) for part in parts], ignore_index=True) for name in ("kept", "failed", "dropped"))
    )
    if filtered.kept.empty:
        raise ReportError("no usable runs: every run failed or was dropped by the neither-score filter")
    present = set(filtered.kept["decoding"])
    decodings = [d for d in ("sample", "greedy") if d in present]

    selected, notes = [], {}
    for run in runs:
        rows, note = select_extractability(run)
        notes[run.group] = note
        if rows is not None:
            selected.append(rows)
    extractability = pd.concat(selected, ignore_index=True) if selected else None

    h1_results: dict[str, dict[str, dict[str, H1Result]]] = {}
    lowest_rates = {run.group: float(run.results["s_only_rate"].min()) for run in runs}
    if extractability is not None:
        for decoding in decodings:
            tasks = task_evidence(filtered.kept, extractability, decoding, lowest_rates)
            groups = dict.fromkeys(task.group for task in tasks)  # groups with both tables for this decoding
            scopes = {group: [task for task in tasks if task.group == group] for group in groups}
            if len(scopes) > 1:
                scopes[POOLED] = tasks
            h1_results[decoding] = {
                scope: {setting: h1(scope_tasks, scope, setting, n_boot=n_boot, seed=seed) for setting in H1_SETTINGS}
                for scope, scope_tasks in scopes.items()
            }
    use_thresholds = {group: value.use_target for group, value in thresholds.items()}
    h2_results = {decoding: h2(filtered.kept, decoding, use_thresholds) for decoding in decodings}
    return Analysis(
        runs, thresholds, filtered, summarise_scores(filtered.kept), decodings, extractability, notes, h1_results, h2_results
    )


# ---------------------------------------------------------------------------
# Formatting


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _mean_sem(mean: float, error: float) -> str:
    if not math.isfinite(error):
        return _number(mean)
    return f"{mean:.2f} ± {error:.2f}"


def _p_value(p_value: float, n: int) -> str:
    if not math.isfinite(p_value):
        return "–"
    kind = "exact" if n <= EXACT_PERMUTATION_MAX_N else "t approx."
    shown = f"{p_value:.3f}" if p_value >= 0.001 else "< 0.001"
    return f"{shown} ({kind})"


def _interval(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    return f"[{low:.2f}, {high:.2f}]"


def _rate(value: float | None) -> str:
    return "never" if value is None else f"{value:g}"


def _smallest_exact_p(n: int) -> float:
    return 2.0 / math.factorial(n)


def _task_label(analysis: Analysis, group: str, task_name: str) -> str:
    return figures.task_label(group, task_name, analysis.several_groups)


# ---------------------------------------------------------------------------
# Plain-words summary


def _strength(rho: float) -> str:
    size = abs(rho)
    return "strong" if size >= 0.7 else "moderate" if size >= 0.4 else "weak"


def _h1_sentence(result: H1Result) -> str:
    correlation = result.correlation
    where = H1_SETTINGS[result.setting]
    if not correlation.defined:
        reason = f"only {correlation.n} task(s)" if correlation.n < MIN_TASKS_FOR_RHO else "one of the variables is constant"
        return f"{where}, ρ is undefined ({reason}), so these data cannot speak to H1."
    direction = "more" if correlation.rho > 0 else "less"
    text = (
        f"{where}, tasks whose target is relatively more extractable use the target {direction} "
        f"({_strength(correlation.rho)} correlation: Spearman ρ = {correlation.rho:.2f}, p = {_p_value(correlation.p_value, correlation.n)}, "
        f"n = {correlation.n} tasks from {correlation.n_runs} runs, 95 % bootstrap interval {_interval(correlation.ci_low, correlation.ci_high)})"
    )
    return text


def _h1_verdict(results: dict[str, H1Result]) -> str:
    primary = results["rate0"].correlation
    if not primary.defined:
        return "H1 cannot be judged from these data."
    if primary.rho > 0 and primary.p_value < 0.05:
        verdict = "The data support H1"
    elif primary.rho > 0:
        verdict = "The data point in the direction of H1 but are not significant at 5 %"
    elif primary.p_value < 0.05:
        verdict = "The data go against H1"
    else:
        verdict = "The data do not support H1"
    trust = []
    if primary.n <= EXACT_PERMUTATION_MAX_N:
        trust.append(f"with n = {primary.n} tasks the smallest possible exact p-value is {_smallest_exact_p(primary.n):.3g}")
    if math.isfinite(primary.ci_low):
        covers = primary.ci_low <= 0 <= primary.ci_high
        trust.append(
            f"the bootstrap interval {'includes' if covers else 'excludes'} 0"
            + (", so no relation is also consistent with the data" if covers else "")
        )
        if primary.n <= 5:
            trust.append("with so few tasks the bootstrap interval itself understates the uncertainty")
    return verdict + (" (" + "; ".join(trust) + ")." if trust else ".")


def _h2_sentence(table: pd.DataFrame) -> str:
    if table.empty:
        return "H2 (evidence): no task has usable runs."
    defined = table[table["rho"].notna()]
    rising = int((defined["rho"] > 0).sum())
    significant = int(((defined["rho"] > 0) & (defined["p_value"] < 0.05)).sum())
    reached = table[table["evidence_required"].notna()]
    never = table[table["evidence_required"].isna()]
    thresholds = sorted(set(table["threshold"]))
    threshold_text = "/".join(f"{t:g}" for t in thresholds)
    text = (
        f"H2 (more evidence against the spurious feature → more use of the target): use_target rises with the s-only rate in "
        f"{rising} of {len(table)} tasks (significantly, p < 0.05, in {significant}"
        + (f"; ρ is undefined in {len(table) - len(defined)}, where use_target does not vary" if len(defined) < len(table) else "")
        + ")."
    )
    if not reached.empty:
        listed = ", ".join(f"{row.task_name} at p = {row.evidence_required:g}" for row in reached.itertuples())
        text += f" use_target reaches {threshold_text} in {len(reached)} task(s) ({listed})"
    else:
        text += f" use_target never reaches {threshold_text}"
    if not never.empty and not reached.empty:
        text += f" and never within the grid in {', '.join(never['task_name'])}"
    text += "."
    if rising > len(table) / 2 and significant > 0:
        text += " The data support H2."
    elif rising > len(table) / 2:
        text += " The direction agrees with H2, but no task shows a significant trend."
    else:
        text += " The data do not support H2."
    return text


def summary_paragraphs(analysis: Analysis) -> list[str]:
    paragraphs = []
    headline = analysis.headline_h1()
    decoding = analysis.headline_decoding
    if headline is None and analysis.extractability is None:
        paragraphs.append(
            "H1 (extractability) is not tested: no run has an extractability.csv (probing was off), so there is "
            "nothing to correlate feature use with."
        )
    elif headline is None:
        paragraphs.append(
            "H1 (extractability) is not tested: no task has both an extractability measurement and kept RL runs "
            f"with {decoding} decoding."
        )
    else:
        scope = next(iter(headline.values())).scope
        scope_text = "all runs pooled" if scope == POOLED else f"run {scope}"
        sentences = [_h1_sentence(result) for result in headline.values()]
        paragraphs.append(
            f"H1 (more extractable target → more use of the target), {scope_text}, {decoding} decoding: "
            + "; ".join(sentences)
            + ". "
            + _h1_verdict(headline)
        )
    paragraphs.append(_h2_sentence(analysis.h2[decoding]))
    seeds = analysis.summary[analysis.summary["decoding"] == decoding]["n_seeds"]
    trust = (
        f"How much to trust this: each task × rate cell averages {seeds.min()}–{seeds.max()} seed(s); "
        f"{len(analysis.filtered.failed)} run(s) failed numerically and {len(analysis.filtered.dropped)} were dropped by the neither-score filter "
        "(listed below). Correlations across a handful of tasks are fragile: read ρ together with n and its interval."
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
        manifest, model, results = run.manifest, run.config.get("model", {}), run.results
        git = str(manifest.get("git_sha") or "–")[:12] + (" (dirty)" if manifest.get("git_dirty") else "")
        thresholds = analysis.thresholds[run.group]
        overview.append(
            [
                run.group,
                run.experiment,
                f"**{run.status}**" if run.is_partial else run.status,
                f"{model.get('source', '?')} {model.get('architecture', '')} {model.get('n_layer', '?')} layers × {model.get('d_model', '?')}",
                ", ".join(str(t) for t in sorted(results["task_id"].unique())),
                ", ".join(f"{r:g}" for r in sorted(results["s_only_rate"].unique())),
                str(results["seed"].nunique()),
                f"{thresholds.failed_neither:g} / {thresholds.use_target:g}",
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
            ["run", "experiment", "status", "model", "tasks", "s-only rates", "seeds", "thresholds: neither / use_target", "git"],
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
    if dropped.empty:
        thresholds = ", ".join(sorted({f"{t.failed_neither:g}" for t in analysis.thresholds.values()}))
        blocks.append(Paragraph(f"No run was dropped by the neither-score filter (threshold {thresholds})."))
    else:
        blocks.append(
            Paragraph(
                f"{len(dropped)} run(s) never learned the task (their neither score is below the threshold) and are dropped:"
            )
        )
        rows = [
            [
                _task_label(analysis, r.group, r.task_name),
                f"{r.s_only_rate:g}",
                str(r.seed),
                f"{r.neither:.3f} ({r.judged_on})",
                f"{analysis.thresholds[r.group].failed_neither:g}",
            ]
            for r in dropped.itertuples()
        ]
        blocks.append(Table(["task", "s-only rate", "seed", "neither score (decoding)", "threshold"], rows))
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


def _h1_section(analysis: Analysis, figure_paths: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "H1: relative extractability vs use of the target")]
    if analysis.extractability is None:
        return blocks + [
            Paragraph("Skipped: no run directory has an extractability.csv (the runs were made with probing off).")
        ]
    if not any(analysis.h1.values()):
        return blocks + [Paragraph("Skipped: no task has both an extractability measurement and kept RL runs.")]
    used = "; ".join(f"{group}: {note}" for group, note in analysis.extractability_notes.items())
    blocks.append(
        Paragraph(
            "Spearman ρ across tasks between MDL(s)/MDL(t) and use_target (mean over seeds), at the lowest s-only rate "
            "(p = 0, Cruz et al.) and averaged over rates (Lovering et al.). p-values are exact permutation p-values for "
            f"n ≤ {EXACT_PERMUTATION_MAX_N}. The 95 % interval is a percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, "
            f"seed {BOOTSTRAP_SEED}) over tasks and, within tasks, over seeds. Extractability rows used: {used}."
        )
    )
    rows = []
    for decoding, scopes in analysis.h1.items():
        for scope, settings in scopes.items():
            for setting, result in settings.items():
                c, fit = result.correlation, result.fit
                rows.append(
                    [
                        scope,
                        decoding,
                        H1_SETTINGS[setting],
                        str(c.n),
                        str(c.n_runs),
                        _number(c.rho),
                        _p_value(c.p_value, c.n),
                        _interval(c.ci_low, c.ci_high) + (f" ({c.n_boot_valid} valid)" if c.n_boot_valid else ""),
                        f"slope {fit.slope:.2f}, midpoint {fit.midpoint:.3g}" if fit else "not fitted",
                    ]
                )
    blocks.append(Table(["scope", "decoding", "feature use", "n tasks", "runs", "ρ", "p", "95 % CI", "logistic fit"], rows))
    for run in analysis.runs:
        lowest = float(run.results["s_only_rate"].min())
        if lowest > 0:
            blocks.append(Paragraph(f"Run {run.group} has no p = 0 runs: \"at p = 0\" uses its lowest rate, p = {lowest:g}."))
    left_out = sorted({name for scopes in analysis.h1.values() for s in scopes.values() for r in s.values() for name in r.left_out})
    if left_out:
        blocks.append(
            Paragraph(f"Left out at p = 0 because none of their runs at that rate was kept: {', '.join(left_out)}.")
        )
    if any(not r.correlation.defined for scopes in analysis.h1.values() for s in scopes.values() for r in s.values()):
        blocks.append(
            Paragraph(f"ρ is undefined (–) where fewer than {MIN_TASKS_FOR_RHO} tasks have results or a variable is constant; such rows carry no information.")
        )
    points = analysis.headline_h1()
    if points is not None:
        table = []
        for setting, result in points.items():
            for r in result.points.itertuples():
                table.append(
                    [
                        _task_label(analysis, r.group, r.task_name),
                        H1_SETTINGS[setting],
                        _mean_sem(r.relative_extractability, r.relative_extractability_sem),
                        _mean_sem(r.use_target, r.use_target_sem),
                        str(r.runs),
                    ]
                )
        blocks += [Heading(3, "Points behind the headline correlation"), Table(["task", "feature use", "MDL(s)/MDL(t)", "use_target", "runs"], table)]
    for key, alt in (("b", "(b) use_target vs relative extractability"), ("c", "(c) relative extractability per task")):
        if key in figure_paths:
            blocks.append(Image(figure_paths[key], alt))
    blocks += _extractability_table(analysis)
    return blocks


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
                    str(r.get("n_seeds", "–")),
                ]
            )
    return [
        Heading(3, "All extractability measurements"),
        Table(["task", "probe mode", "layer", "MDL(s) bits", "MDL(t) bits", "MDL(s)/MDL(t)", "probe seeds"], rows),
    ]


def _h2_section(analysis: Analysis, figure_paths: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "H2: evidence (s-only rate) vs use of the target"),
        Paragraph(
            "Per task: Spearman ρ between the s-only rate and use_target over the kept runs (one point per run), and the "
            "evidence required: the smallest s-only rate at which the mean use_target reaches the threshold "
            "(\"never\": not within the grid)."
        ),
    ]
    for decoding, table in analysis.h2.items():
        rows = [
            [
                _task_label(analysis, r.group, r.task_name),
                _number(r.rho),
                _p_value(r.p_value, r.n_runs),
                str(r.n_runs),
                _number(r.use_target_at_lowest),
                _number(r.use_target_at_highest),
                f"{r.threshold:g}",
                _rate(None if pd.isna(r.evidence_required) else r.evidence_required),
            ]
            for r in table.itertuples()
        ]
        blocks.append(Heading(3, f"{decoding} decoding"))
        blocks.append(
            Table(["task", "ρ", "p", "runs", "use_target at lowest p", "at highest p", "threshold", "evidence required"], rows)
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
    blocks += _scores_section(analysis)
    blocks += _baseline_section(analysis)
    blocks += _h1_section(analysis, figure_paths)
    blocks += _h2_section(analysis, figure_paths)
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
    headline = analysis.headline_h1()
    if headline is not None and all(len(result.points) > 0 for result in headline.values()):
        keep("b", figures.figure_use_vs_extractability(headline, analysis.headline_decoding, analysis.experiment), "b_use_vs_extractability")
    if analysis.extractability is not None and not analysis.extractability.empty:
        notes = sorted(set(analysis.extractability_notes.values()) - {"no extractability.csv"})
        keep("c", figures.figure_extractability_bars(analysis.extractability, "; ".join(notes)), "c_relative_extractability")
    for run in analysis.runs:
        curves = _kept_curves(run, analysis.filtered.kept)
        if curves is not None:
            stem = "d_training_curves" if not analysis.several_groups else f"d_training_curves_{_safe(run.group)}"
            keep(f"d_{run.group}", figures.figure_training_curves(curves, run.group), stem)
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_report(
    run_dirs: list[Path],
    out_dir: Path | None = None,
    *,
    failed_neither_threshold: float | None = None,
    use_target_threshold: float | None = None,
) -> Path:
    """Write report.md, report.html and figures/*.png|svg for one or more run directories.

    Each run directory is one group (e.g. one model); with several, H1 is reported per
    group and pooled. Thresholds default to each run's `eval.failed_neither_threshold`
    and `eval.use_target_threshold` (else 0.0 and 0.9). Raises `ReportError` on bad input.
    Returns the path of report.md (in `out_dir`, default: the first run directory).
    """
    if not run_dirs:
        raise ReportError("no run directories given")
    for name, value in (("failed_neither_threshold", failed_neither_threshold), ("use_target_threshold", use_target_threshold)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ReportError(f"{name} must be a finite number (got {value!r})")
    runs = [load_run(Path(path)) for path in run_dirs]
    analysis = analyse(runs, failed_neither_threshold=failed_neither_threshold, use_target_threshold=use_target_threshold)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dirs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
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
