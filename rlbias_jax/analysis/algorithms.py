"""Reports across RL algorithms (PPO, GRPO, RLOO; docs/algorithms.md).

A run directory's algorithm is its config's `algorithm.name` (PPO for runs made before the
field existed). Runs of different algorithms are never replicates of one point: the pooled
scope keys points by (model, algorithm, task). When the run directories use several
algorithms, stats.json gains one scope per algorithm (`ALGORITHM_SCOPE` + name) pooling that
algorithm's run directories, every test names its `algorithm`, and the report shows H1 and
H2 per algorithm side by side, with one figure: use_target vs relative extractability, one
colour per algorithm.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rlbias_jax.analysis import behaviour as behaviours
from rlbias_jax.analysis import figures
from rlbias_jax.analysis.document import Block, Heading, Image, Paragraph, Table

DEFAULT_ALGORITHM = "ppo"  # runs made before [algorithm] existed
ALGORITHM_SCOPE = "algorithm "  # scope names: "algorithm grpo"
ALGORITHM_COLOURS = {"ppo": "tab:blue", "grpo": "tab:orange", "rloo": "tab:green"}
FIGURE_KEY = "algorithms"


def run_algorithm(config: dict) -> str:
    """`algorithm.name` of a run's config (a manifest's "config"), PPO when absent."""
    section = config.get("algorithm") if isinstance(config, dict) else None
    name = section.get("name") if isinstance(section, dict) else None
    return str(name) if name else DEFAULT_ALGORITHM


def scope_algorithm(rows: pd.DataFrame) -> str:
    """The algorithm of a scope's runs ('grpo'), or several joined ('grpo+ppo') for a mixed pool."""
    names = sorted(set(rows["algorithm"])) if "algorithm" in rows.columns else [DEFAULT_ALGORITHM]
    return "+".join(names)


def algorithm_scopes(runs: pd.DataFrame) -> dict[str, tuple[pd.Series, bool]]:
    """Extra (mask, pooled) scopes of stats_document: one per algorithm, when the runs use several."""
    if "algorithm" not in runs.columns:
        return {}
    names = list(dict.fromkeys(runs["algorithm"]))
    if len(names) < 2:
        return {}
    return {f"{ALGORITHM_SCOPE}{name}": (runs["algorithm"] == name, True) for name in names}


def several_algorithms(stats: dict) -> list[str]:
    """The algorithms with their own scope in stats.json ([] when the report has one algorithm)."""
    scopes = dict.fromkeys(t["scope"] for t in stats["tests"] if t["scope"].startswith(ALGORITHM_SCOPE))
    return [scope.removeprefix(ALGORITHM_SCOPE) for scope in scopes]


def _find(stats: dict, test: str, scope: str, decoding: str, feature_use: str | None = None) -> dict | None:
    for entry in stats["tests"]:
        if (entry["test"], entry["scope"], entry["decoding"]) == (test, scope, decoding) and feature_use in (None, entry["feature_use"]):
            return entry
    return None


def _rho_p(entry: dict | None) -> str:
    if entry is None:
        return "–"
    if entry["rho"] is None:
        return f"undefined (n = {entry['n']})"
    p = entry["p_one_sided"]
    return f"ρ = {entry['rho']:.2f}, p = {p:.3g}, n = {entry['n']}" if p is not None else f"ρ = {entry['rho']:.2f}, n = {entry['n']}"


def comparison_rows(stats: dict, behaviour: pd.DataFrame, decodings: list[str]) -> list[list[str]]:
    """One row per algorithm × decoding: H1 (both use views), H2, their verdicts and behaviour counts."""
    rows = []
    for decoding in decodings:
        for name in several_algorithms(stats):
            scope = f"{ALGORITHM_SCOPE}{name}"
            h1 = _find(stats, "H1", scope, decoding, "rate0")
            h1_average = _find(stats, "H1", scope, decoding, "average")
            h2 = _find(stats, "H2", scope, decoding)
            table = behaviour[(behaviour["algorithm"] == name) & (behaviour["decoding"] == decoding)]
            counted = table["behaviour"].value_counts()
            counts = ", ".join(f"{kind} {int(counted.get(kind, 0))}" for kind in (*behaviours.BEHAVIOURS, behaviours.FAILED))
            rows.append([
                name, decoding, str(len(table)), _rho_p(h1), h1["verdict_text"] if h1 else "–", _rho_p(h1_average),
                _rho_p(h2), h2["verdict_text"] if h2 else "–", counts,
            ])
    return rows


def section(stats: dict, behaviour: pd.DataFrame, decodings: list[str], figure_paths: dict[str, str]) -> list[Block]:
    """The report's "Algorithms side by side" section ([] with one algorithm)."""
    if not several_algorithms(stats):
        return []
    blocks: list[Block] = [
        Heading(2, "Algorithms side by side"),
        Paragraph(
            "H1 and H2 per RL algorithm: each algorithm's run directories pooled (scope 'algorithm NAME' in stats.json; runs of "
            "different algorithms are never replicates of one point). H1: one-sided Spearman ρ of MDL(s)/MDL(t) against "
            "use_target of learned runs (at the lowest s-only rate, and averaged over rates); H2: the mean within-task ρ of the "
            "s-only rate against the target-user indicator. Behaviour counts are runs (task × rate × seed). Every algorithm "
            "samples the same number of responses per iteration (docs/algorithms.md)."
        ),
        Table(["algorithm", "decoding", "runs", "H1 use at lowest rate", "H1 verdict", "H1 use averaged over rates", "H2 mean ρ",
               "H2 verdict", "behaviour counts"], comparison_rows(stats, behaviour, decodings)),
    ]
    if FIGURE_KEY in figure_paths:
        blocks.append(Image(figure_paths[FIGURE_KEY], "use_target vs relative extractability, one colour per algorithm"))
    return blocks


def figure_use_by_algorithm(stats: dict, decoding: str, experiment: str = "toy") -> Figure | None:
    """use_target (lowest s-only rate; averaged over rates) vs relative extractability of each
    algorithm's points, one colour per algorithm, ρ and p in the legend. None without points."""
    names = several_algorithms(stats)
    views = [view for view in ("rate0", "average")
             if any((_find(stats, "H1", f"{ALGORITHM_SCOPE}{n}", decoding, view) or {}).get("points") for n in names)]
    if not views:
        return None
    with matplotlib.rc_context(figures.STYLE):
        figure = figures._new_figure(8.0, 4.8)
        axes = figure.subplots(1, len(views), sharey=True, squeeze=False)[0]
        for axis, view in zip(axes, views):
            xs, ys = [], []
            for index, name in enumerate(names):
                test = _find(stats, "H1", f"{ALGORITHM_SCOPE}{name}", decoding, view)
                points = (test or {}).get("points") or []
                if not points:
                    continue
                x = np.array([p["x"] for p in points], dtype=np.float64)
                y = np.array([p["y"] for p in points], dtype=np.float64)
                y_sem = np.nan_to_num(np.array([p["y_sem"] if p["y_sem"] is not None else np.nan for p in points], dtype=np.float64))
                xs.append(x)
                ys.append(y)
                axis.errorbar(x, y, yerr=y_sem, fmt=figures.GROUP_MARKERS[index % len(figures.GROUP_MARKERS)], markersize=5,
                              capsize=2, color=ALGORITHM_COLOURS.get(name, f"C{index}"),
                              label=f"{name}: {figures.correlation_label(test)}")
            x = np.concatenate(xs)
            axis.set_xscale("log")
            axis.set_xlim(min(float(x.min()) / 1.5, 0.8), max(float(x.max()) * 1.5, 1.25))
            figures.plain_log_ticks(axis.xaxis, *axis.get_xlim())
            axis.axvline(1.0, color="grey", linestyle=":", linewidth=1, label="equal extractability (ratio 1)")
            axis.set_ylim(*figures._score_limits(np.concatenate(ys)))
            axis.set_xlabel(figures.EXTRACTABILITY_LABEL)
            axis.set_title(figures.VIEW_TITLES[view])
            axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7)
            axis.grid(True, which="both", alpha=0.25)
        axes[0].set_ylabel(figures.use_label(experiment))
        figure.suptitle(f"Feature use of learned runs vs relative extractability per algorithm ({decoding} decoding)")
    return figure
