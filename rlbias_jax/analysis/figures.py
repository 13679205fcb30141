"""The paper's figures (SPEC §7), drawn with matplotlib's object API and the Agg canvas.

(a) score vs s-only rate, one panel per partition, one line per task coloured by
relative extractability; (b) use_target vs relative extractability with the logistic
fit; (c) relative extractability per task as bars around 1; (d) training curves.

No pyplot: figures are `matplotlib.figure.Figure` objects, so importing this module
does not change the backend of a notebook or a GUI session.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.cm
import matplotlib.colors
import matplotlib.patches
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from rlbias_jax.analysis.stats import LogisticFit

RATE_LABEL = "s-only rate p (fraction, symlog scale)"
SCORE_UNITS = {"toy": "mean test reward, 0–1", "nl": "normalised reward (r + 2.8) / 5.6"}
EXTRACTABILITY_LABEL = "relative extractability MDL(s) / MDL(t) (ratio, log scale)"
VIEW_TITLES = {"rate0": "use of the target at the lowest s-only rate", "average": "use of the target averaged over s-only rates"}
PARTITION_TITLES = {
    "both": "both (s and t; reward for label 1)",
    "neither": "neither (label 0)",
    "s_only": "s-only (label 0; s misleads)",
    "t_only": "t-only (label 1; unseen in training)",
}
GROUP_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
GROUP_LINESTYLES = ("-", "--", ":", "-.")
STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "svg.hashsalt": "rlbias",  # deterministic SVG ids
}


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, directory: Path, stem: str) -> list[Path]:
    """Write `stem.png` and `stem.svg` (without timestamps, so reruns are byte-identical)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.png", directory / f"{stem}.svg"]
    with matplotlib.rc_context(STYLE):
        figure.savefig(paths[0], dpi=150, metadata={"Software": None})
        figure.savefig(paths[1], metadata={"Date": None})
    return paths


def task_label(group: str, task_name: str, several_groups: bool) -> str:
    return f"{group}: {task_name}" if several_groups else task_name


# ---------------------------------------------------------------------------
# Shared helpers


def extractability_norm(values: np.ndarray) -> matplotlib.colors.Normalize:
    """A log colour scale centred on ratio 1 when the data straddle it."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high / low < 1.05:
        low, high = low / 1.1, high * 1.1
    return matplotlib.colors.LogNorm(vmin=low, vmax=high)


def _rate_axis(axis, rates: np.ndarray) -> None:
    positive = rates[rates > 0]
    linthresh = float(positive.min()) if positive.size else 1e-3
    axis.set_xscale("symlog", linthresh=linthresh, linscale=0.6)
    top = float(rates.max()) if rates.size else 1.0
    decades = [10.0**k for k in range(int(math.floor(math.log10(linthresh))), 1) if 10.0**k <= top * 1.0001]
    if decades and top >= 3 * decades[-1]:
        decades.append(top)  # e.g. 0.5, far enough from 0.1 not to collide
    axis.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.0] + decades))
    axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_locator(matplotlib.ticker.FixedLocator(sorted(set(rates.tolist()))))
    axis.set_xlim(-linthresh * 0.3, top * 1.25)
    axis.grid(True, which="both", alpha=0.25)


def plain_log_ticks(axis, low: float, high: float) -> None:
    """Ticks of a log axis at 1-2-5 steps, labelled 0.5, 1, 2 rather than 5×10⁻¹."""
    exponents = range(int(math.floor(math.log10(low))) - 1, int(math.ceil(math.log10(high))) + 1)
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0**e for e in exponents for m in mantissas if low <= m * 10.0**e <= high]
        if len(ticks) >= 3:
            break
    axis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def score_label(experiment: str) -> str:
    return f"score ({SCORE_UNITS.get(experiment, 'mean test score')})"


def use_label(experiment: str) -> str:
    return f"use_target = (s-only + t-only) / 2 of learned runs\n({SCORE_UNITS.get(experiment, 'mean test score')})"


def _score_limits(values: np.ndarray) -> tuple[float, float]:
    """[0, 1] with a margin, widened when (NL normalised) scores fall outside it."""
    finite = values[np.isfinite(values)]
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = max(1.0, float(finite.max())) if finite.size else 1.0
    return low - 0.05, high + 0.05


def _colours(keys: list[tuple[str, int]], extractability: dict[tuple[str, int], float]):
    """Colour per (group, task): by relative extractability when known, else a qualitative palette."""
    known = [extractability[key] for key in keys if key in extractability]
    if known and len(known) == len(keys):
        norm = extractability_norm(np.array(known))
        cmap = matplotlib.colormaps["viridis"]
        return {key: cmap(norm(extractability[key])) for key in keys}, matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    palette = matplotlib.colormaps["tab10"]
    return {key: palette(index % 10) for index, key in enumerate(keys)}, None


# ---------------------------------------------------------------------------
# (a) score vs rate


def figure_scores_vs_rate(
    summary: pd.DataFrame, extractability: dict[tuple[str, int], float], decoding: str, experiment: str = "toy"
) -> Figure:
    """Four panels (one per partition): mean score ± SEM over seeds vs s-only rate."""
    rows = summary[summary["decoding"] == decoding]
    keys = list(dict.fromkeys(zip(rows["group"], rows["task_id"])))
    groups = list(dict.fromkeys(rows["group"]))
    several_groups = len(groups) > 1
    colours, mappable = _colours(keys, extractability)
    rates = np.sort(rows["s_only_rate"].unique())
    with matplotlib.rc_context(STYLE):
        figure = _new_figure(8.0, 6.6)
        axes = figure.subplots(2, 2, sharex=True, sharey=True)
        for axis, partition in zip(axes.flat, PARTITION_TITLES):
            for key in keys:
                line = rows[(rows["group"] == key[0]) & (rows["task_id"] == key[1])].sort_values("s_only_rate")
                x = line["s_only_rate"].to_numpy()
                mean = line[partition].to_numpy()
                error = np.nan_to_num(line[f"{partition}_sem"].to_numpy())
                style = GROUP_LINESTYLES[groups.index(key[0]) % len(GROUP_LINESTYLES)]
                label = task_label(key[0], line["task_name"].iloc[0], several_groups)
                axis.plot(x, mean, style, marker="o", markersize=3.5, color=colours[key], label=label)
                axis.fill_between(x, mean - error, mean + error, color=colours[key], alpha=0.18, linewidth=0)
            axis.set_title(PARTITION_TITLES[partition])
            axis.set_ylim(*_score_limits(rows[list(PARTITION_TITLES)].to_numpy()))
            _rate_axis(axis, rates)
        for axis in axes[1]:
            axis.set_xlabel(RATE_LABEL)
        for axis in axes[:, 0]:
            axis.set_ylabel(score_label(experiment))
        handles, labels = axes[0, 0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), title="task (line: mean over seeds; band: ± SEM)")
        if mappable is not None:
            bar = figure.colorbar(mappable, ax=axes, shrink=0.8)
            bar.set_label("relative extractability MDL(s) / MDL(t) (ratio, log scale)")
            plain_log_ticks(bar.ax.yaxis, mappable.norm.vmin, mappable.norm.vmax)
        figure.suptitle(f"(a) Test score per partition vs evidence ({decoding} decoding)")
    return figure


# ---------------------------------------------------------------------------
# (b) use_target vs relative extractability


def _format_p(p_value: float | None) -> str:
    if p_value is None:
        return "p n/a"
    return f"one-sided p = {p_value:.2g}" if p_value >= 0.001 else "one-sided p < 0.001"


def correlation_label(test: dict) -> str:
    """ρ, one-sided p, n and CI of a stats.json H1 entry."""
    if test["rho"] is None:
        return f"Spearman ρ undefined (n = {test['n']})"
    interval = ""
    if test["ci_low"] is not None and test["ci_high"] is not None:
        interval = f",\n95% CI [{test['ci_low']:.2f}, {test['ci_high']:.2f}]"
    return f"Spearman ρ = {test['rho']:.2f}, {_format_p(test['p_one_sided'])}, n = {test['n']}{interval}"


def figure_use_vs_extractability(tests: list[dict], decoding: str, experiment: str = "toy") -> Figure:
    """One panel per H1 entry of stats.json (use at the lowest rate; average over rates): points with
    SEM bars, censored points hollow, the logistic fit and ρ."""
    with matplotlib.rc_context(STYLE):
        figure = _new_figure(8.0, 5.6)
        axes = figure.subplots(1, len(tests), sharey=True, squeeze=False)[0]
        all_y = [p["y"] for t in tests for p in t["points"]] + [c["y"] for t in tests for c in t["censored"] if c["y"] is not None]
        for axis, test in zip(axes, tests):
            points = pd.DataFrame(test["points"], columns=["groups", "x", "x_sem", "y", "y_sem"])
            groups = list(dict.fromkeys("+".join(g) for g in points["groups"]))
            for index, group in enumerate(groups):
                rows = points[points["groups"].map("+".join) == group]
                label = f"{group} (mean ± SEM)" if len(groups) > 1 else "(task, model) points (mean ± SEM over seeds)"
                axis.errorbar(
                    rows["x"], rows["y"],
                    xerr=np.nan_to_num(rows["x_sem"].to_numpy(dtype=np.float64)),
                    yerr=np.nan_to_num(rows["y_sem"].to_numpy(dtype=np.float64)),
                    fmt=GROUP_MARKERS[index % len(GROUP_MARKERS)], markersize=5, capsize=2, label=label,
                )
            censored = [c for c in test["censored"] if c["y"] is not None and not c["included"]]
            if censored:
                axis.plot([c["x"] for c in censored], [c["y"] for c in censored], "o", markerfacecolor="none",
                          markeredgecolor="grey", markersize=6, label="censored extractability (not in ρ)")
            x = np.array([p["x"] for p in test["points"]] + [c["x"] for c in censored], dtype=np.float64)
            axis.set_xscale("log")
            axis.set_xlim(min(float(x.min()) / 1.5, 0.8), max(float(x.max()) * 1.5, 1.25))
            plain_log_ticks(axis.xaxis, *axis.get_xlim())
            if test["fit"] is not None:
                grid = np.geomspace(*axis.get_xlim(), 200)
                fit = LogisticFit(test["fit"]["slope"], test["fit"]["midpoint"])
                axis.plot(grid, fit(grid), "k-", linewidth=1.2, label=f"logistic fit (midpoint {fit.midpoint:.2g})")
            axis.axvline(1.0, color="grey", linestyle=":", linewidth=1, label="equal extractability (ratio 1)")
            axis.plot([], [], " ", label=correlation_label(test))
            axis.set_ylim(*_score_limits(np.array(all_y, dtype=np.float64)))
            axis.set_xlabel(EXTRACTABILITY_LABEL)
            axis.set_title(VIEW_TITLES[test["feature_use"]])
            axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7)
            axis.grid(True, which="both", alpha=0.25)
        axes[0].set_ylabel(use_label(experiment))
        figure.suptitle(f"(b) Feature use of learned runs vs relative extractability ({tests[0]['scope']}, {decoding} decoding)")
    return figure


# ---------------------------------------------------------------------------
# (c) relative extractability bars


def figure_extractability_bars(selected: pd.DataFrame, note: str) -> Figure:
    """Bars from 1 to MDL(s)/MDL(t) per task on a log axis, ± SEM; right of 1 favours the target;
    censored rows hatched and faded.

    Horizontal bars, so that task names of any length stay readable without rotation.
    """
    several_groups = selected["group"].nunique() > 1
    labels = [task_label(g, t, several_groups) for g, t in zip(selected["group"], selected["task_name"])]
    values = selected["relative_extractability"].to_numpy()
    errors = np.nan_to_num(selected["relative_extractability_sem"].to_numpy())
    norm = extractability_norm(values)
    colours = [matplotlib.colormaps["viridis"](norm(value)) for value in values]
    with matplotlib.rc_context(STYLE):
        figure = _new_figure(6.5, 2.4 + 0.4 * len(values))
        axis = figure.subplots()
        positions = np.arange(len(values))
        censored = selected["censored"].to_numpy(dtype=bool) if "censored" in selected.columns else np.zeros(len(values), bool)
        bars = axis.barh(positions, values - 1.0, left=1.0, color=colours, edgecolor="black", linewidth=0.5, height=0.6)
        for bar, flagged in zip(bars, censored):
            if flagged:
                bar.set_hatch("///")
                bar.set_alpha(0.45)
        lower = np.minimum(errors, values * 0.95)  # keep error bars positive on the log axis
        axis.errorbar(values, positions, xerr=[lower, errors], fmt="none", ecolor="black", capsize=3, label="± SEM over probe seeds")
        axis.axvline(1.0, color="grey", linestyle="--", linewidth=1, label="equal extractability (ratio 1)")
        axis.set_xscale("log")
        high = float(np.max(values + errors))
        low = float(np.min(values - lower))
        axis.set_xlim(min(low, 1.0) / 1.3, max(high, 1.0) * 1.3)
        plain_log_ticks(axis.xaxis, *axis.get_xlim())
        axis.set_yticks(positions, labels)
        axis.invert_yaxis()  # first task on top
        axis.set_ylabel("task")
        axis.set_xlabel("relative extractability MDL(s) / MDL(t)\n(ratio, log scale; > 1: target easier to extract)")
        handles, labels = axis.get_legend_handles_labels()
        if censored.any():
            handles.append(matplotlib.patches.Patch(facecolor="white", edgecolor="black", hatch="///"))
            labels.append("censored: a probe below probe.min_accuracy")
        figure.legend(handles, labels, loc="outside lower center", ncols=2)
        axis.grid(True, axis="x", which="both", alpha=0.25)
        axis.set_title(f"(c) Relative extractability of the target per task\n({note})")
    return figure


# ---------------------------------------------------------------------------
# (d) training curves


def figure_training_curves(curves: pd.DataFrame, group: str) -> Figure:
    """Mean ± SEM over seeds of the reward (and of the KL when it varies) per iteration, one column per task."""
    metrics = ["env/reward_mean"]
    if "objective/kl" in curves.columns and curves["objective/kl"].abs().max() > 0:
        metrics.append("objective/kl")
    tasks = list(dict.fromkeys(zip(curves["task_id"], curves["task_name"])))
    rates = np.sort(curves["s_only_rate"].unique())
    palette = matplotlib.colormaps["plasma"]
    rate_colours = {rate: palette(0.85 * index / max(len(rates) - 1, 1)) for index, rate in enumerate(rates)}
    units = {"env/reward_mean": "mean reward per episode", "objective/kl": "KL(π ‖ π_ref) per episode (nats)"}
    with matplotlib.rc_context(STYLE):
        figure = _new_figure(max(4.5, 2.6 * len(tasks)), 1.0 + 2.6 * len(metrics))
        axes = figure.subplots(len(metrics), len(tasks), sharex=True, sharey="row", squeeze=False)
        for column, (task_id, task_name) in enumerate(tasks):
            task_rows = curves[curves["task_id"] == task_id]
            for row, metric in enumerate(metrics):
                axis = axes[row, column]
                for rate in rates:
                    stats = task_rows[task_rows["s_only_rate"] == rate].groupby("iteration")[metric].agg(["mean", "std", "count"])
                    if stats.empty:
                        continue
                    error = np.nan_to_num(stats["std"] / np.sqrt(stats["count"]))
                    axis.plot(stats.index, stats["mean"], color=rate_colours[rate], linewidth=1.2, label=f"p = {rate:g}")
                    axis.fill_between(stats.index, stats["mean"] - error, stats["mean"] + error, color=rate_colours[rate], alpha=0.15, linewidth=0)
                axis.grid(True, alpha=0.25)
                if row == 0:
                    axis.set_title(task_name)
                if row == len(metrics) - 1:
                    axis.set_xlabel("PPO iteration (updates)")
                if column == 0:
                    axis.set_ylabel(f"{metric}\n({units[metric]})")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 7), title="s-only rate (line: mean over seeds; band: ± SEM)")
        figure.suptitle(f"(d) Training curves ({group})")
    return figure


# ---------------------------------------------------------------------------
# Readability check


def readability_problems(figure: Figure) -> list[str]:
    """Drawn, non-empty texts that overlap each other or stick out of the figure (should be none)."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    hidden = _undrawn_tick_labels(figure)
    items = []
    for text in figure.findobj(Text):
        if id(text) in hidden or not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        if box.width > 0 and box.height > 0:
            items.append((text.get_text(), box))
    canvas = figure.bbox
    problems = [
        f"outside the figure: {label!r}"
        for label, box in items
        if box.x0 < canvas.x0 - 1 or box.y0 < canvas.y0 - 1 or box.x1 > canvas.x1 + 1 or box.y1 > canvas.y1 + 1
    ]
    for first in range(len(items)):
        for second in range(first + 1, len(items)):
            box_a, box_b = items[first][1], items[second][1]
            width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if width > 1 and height > 1:  # pixels; touching boxes are fine
                problems.append(f"overlap: {items[first][0]!r} and {items[second][0]!r}")
    return problems


def _undrawn_tick_labels(figure: Figure) -> set[int]:
    """Ids of tick labels outside their axis's view: matplotlib keeps but does not draw them."""
    hidden = set()
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            low, high = sorted(axis.get_view_interval())
            tolerance = 1e-9 * max(abs(low), abs(high), 1.0)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                location = tick.get_loc()
                if location is None or not low - tolerance <= location <= high + tolerance:
                    hidden.update({id(tick.label1), id(tick.label2)})
    return hidden
