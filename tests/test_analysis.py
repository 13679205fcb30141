"""Analysis and report on synthetic run directories with known answers.

The run directories are written by hand following docs/run_directory.md, so these
tests pin the input contract as well as the statistics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlbias_jax.analysis import ReportError, analyse, load_run, write_report
from rlbias_jax.analysis import figures, stats
from rlbias_jax.analysis.document import to_html, to_markdown
from rlbias_jax.analysis.report import build_blocks
from rlbias_jax.analysis.tables import filter_runs, run_scores, scores_by_run

TASKS = {1: "contains-1", 2: "first-last", 3: "prefix-duplicate", 5: "adjacent-duplicate"}
RATES = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5)
RELATIVE_EXTRACTABILITY = {1: 2.5, 2: 0.6, 3: 1.3, 5: 0.9}


def monotone_use(task_id: int, rate: float, seed: int) -> float:
    """use_target rising with relative extractability and with the s-only rate, plus seed noise."""
    logit = 3.0 * math.log(RELATIVE_EXTRACTABILITY[task_id]) + 12.0 * rate - 0.5
    return float(np.clip(1 / (1 + math.exp(-logit)) + 0.01 * (seed - 1), 0, 1))


def write_run(
    path: Path,
    *,
    name: str = "toy_synthetic",
    experiment: str = "toy",
    status: str = "complete",
    tasks: dict[int, str] = TASKS,
    rates: tuple[float, ...] = RATES,
    seeds: int = 3,
    use=monotone_use,
    neither=lambda task_id, rate, seed: 0.95,
    failed: dict[tuple[int, float, int], int] | None = None,
    decodings: tuple[str, ...] = ("sample",),
    extractability: dict[int, float] | None = RELATIVE_EXTRACTABILITY,
    eval_config: dict | None = None,
    iterations: int = 6,
) -> Path:
    """A run directory per docs/run_directory.md with use_target given by `use`."""
    failed = failed or {}
    path.mkdir(parents=True)
    config = {
        "run": {"name": name, "experiment": experiment},
        "task": {"task_ids": list(tasks)},
        "model": {"source": "random", "architecture": "gpt2", "n_layer": 4, "d_model": 256},
        "sweep": {"s_only_rates": list(rates), "seeds": seeds},
        "eval": eval_config or {"greedy": "greedy" in decodings, "failed_neither_threshold": 0.0, "use_target_threshold": 0.9},
        "probe": {"mode": "policy"},
    }
    manifest = {
        "name": name,
        "experiment": experiment,
        "status": status,
        "config": config,
        "git_sha": "abc123def456789",
        "git_dirty": False,
        "packages": {"jax": "0.10.2", "flax": "0.12.0"},
        "python": "3.11.7",
        "platform": "Linux-test",
        "devices": [{"id": 0, "platform": "cpu", "kind": "cpu"}],
        "started_at": "2026-11-30T15:00:00Z",
        "finished_at": "2026-11-30T15:08:00Z",
        "wall_time_s": 480.0,
        "phases": {"probe": {"wall_time_s": 60.0}, "rl": {"wall_time_s": 400.0, "episodes": 123456, "episodes_per_s": 308.6}},
        "tasks_completed": list(tasks),
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    results, curves = [], []
    for task_id, task_name in tasks.items():
        for rate in rates:
            for seed in range(seeds):
                fault = failed.get((task_id, rate, seed))
                use_target = use(task_id, rate, seed)
                spread = min(0.02, use_target, 1.0 - use_target)  # s-only and t-only differ, their mean is use
                scores = {
                    "both": 0.97,
                    "neither": neither(task_id, rate, seed),
                    "s_only": use_target + spread,
                    "t_only": use_target - spread,
                }
                for decoding in decodings:
                    for partition, score in scores.items():
                        results.append(
                            {
                                "task_id": task_id, "task_name": task_name, "s_only_rate": rate, "seed": seed,
                                "decoding": decoding, "partition": partition,
                                "score": float("nan") if fault is not None else score,
                                "raw_reward": score, "n_examples": 100,
                                "status": "failed" if fault is not None else "ok",
                                "failed_iteration": -1 if fault is None else fault,
                            }
                        )
                for iteration in range(iterations):
                    progress = (iteration + 1) / iterations
                    curves.append(
                        {
                            "task_id": task_id, "task_name": task_name, "s_only_rate": rate, "seed": seed, "iteration": iteration,
                            "env/reward_mean": 0.2 + 0.7 * progress * (0.5 + use_target / 2),
                            "objective/kl": 0.0, "time/episodes_per_s": 300.0,
                        }
                    )
    pd.DataFrame(results).to_csv(path / "results.csv", index=False)
    pd.DataFrame(curves).to_csv(path / "curves.csv", index=False)
    if extractability is not None:
        rows = []
        for task_id, value in extractability.items():
            for mode, layer, scale in (("policy", -1, 1.0), ("frozen", 0, 0.5), ("frozen", -1, 0.8)):
                rows.append(
                    {
                        "task_id": task_id, "task_name": tasks.get(task_id, "x"), "probe_mode": mode, "layer": layer,
                        "mdl_s_bits": 100.0 * value * scale, "mdl_s_sem": 2.0, "mdl_t_bits": 100.0, "mdl_t_sem": 2.0,
                        "relative_extractability": value * scale, "relative_extractability_sem": 0.05 * value,
                        "compression_s": 2.0, "compression_t": 2.0, "accuracy_s": 0.9, "accuracy_t": 0.9,
                        "uniform_bits": 2000.0, "n_seeds": 3,
                    }
                )
        pd.DataFrame(rows).to_csv(path / "extractability.csv", index=False)
    return path


def quick(runs, **kwargs):
    """analyse() with a small bootstrap, for speed."""
    return analyse([load_run(run) if isinstance(run, Path) else run for run in runs], n_boot=300, **kwargs)


def report_text(runs, **kwargs) -> str:
    """report.md's text without drawing figures (drawing is the slow part)."""
    return to_markdown(build_blocks(quick(runs, **kwargs), {}))


# ---------------------------------------------------------------------------
# Statistics with known answers


def test_spearman_monotone_is_one_with_exact_p():
    rho, p_value = stats.spearman(np.array([0.5, 0.9, 1.3, 2.5]), np.array([0.1, 0.2, 0.7, 0.75]))
    assert rho == pytest.approx(1.0)
    assert p_value == pytest.approx(2 / 24)  # exact: 2 of the 4! orderings are as extreme
    rho, p_value = stats.spearman(np.arange(12.0), np.exp(np.arange(12.0)))
    assert rho == pytest.approx(1.0) and p_value < 1e-6


def test_spearman_shuffled_is_small():
    rng = np.random.default_rng(0)
    x = np.arange(400.0)
    rho, p_value = stats.spearman(x, rng.permutation(x))
    assert abs(rho) < 0.15 and p_value > 0.01


def test_spearman_undefined_for_two_points_or_constant():
    assert all(math.isnan(v) for v in stats.spearman(np.array([1.0, 2.0]), np.array([1.0, 2.0])))
    assert all(math.isnan(v) for v in stats.spearman(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.5])))


def test_spearman_rows_matches_scipy_with_ties():
    import scipy.stats

    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(20, 7)).astype(float)
    y = rng.normal(size=(20, 7))
    expected = [scipy.stats.spearmanr(a, b).statistic if np.ptp(a) > 0 else np.nan for a, b in zip(x, y)]
    np.testing.assert_allclose(stats.spearman_rows(x, y), expected, atol=1e-12)


def test_evidence_required_is_smallest_rate_reaching_threshold():
    rates = np.array([0.5, 0.0, 0.01, 0.1, 0.001])
    use = np.array([0.99, 0.1, 0.5, 0.9, 0.2])
    assert stats.evidence_required(rates, use, 0.9) == 0.1  # reaching = ≥
    assert stats.evidence_required(rates, use, 0.95) == 0.5
    assert stats.evidence_required(rates, use, 0.995) is None


def test_logistic_fit_recovers_parameters_and_fails_gracefully():
    x = np.geomspace(0.2, 5.0, 9)
    y = 1 / (1 + np.exp(-2.0 * (np.log(x) - np.log(1.4))))
    fit = stats.fit_logistic(x, y)
    assert fit is not None
    assert fit.slope == pytest.approx(2.0, rel=1e-3) and fit.midpoint == pytest.approx(1.4, rel=1e-3)
    assert stats.fit_logistic(np.array([1.0, 1.0, 1.0]), np.array([0.1, 0.5, 0.9])) is None
    assert stats.fit_logistic(np.array([1.0, 2.0]), np.array([0.1, 0.5])) is None


# ---------------------------------------------------------------------------
# H1 and H2 on synthetic runs


def test_h1_monotone_runs_give_rho_one_and_a_tight_interval(tmp_path):
    analysis = quick([write_run(tmp_path / "run")])
    for setting in ("rate0", "average"):
        correlation = analysis.h1["sample"]["toy_synthetic"][setting].correlation
        assert correlation.rho == pytest.approx(1.0)
        assert correlation.p_value == pytest.approx(2 / 24)
        assert correlation.n == 4
        assert correlation.ci_low == pytest.approx(1.0) and correlation.ci_high == pytest.approx(1.0)
    assert correlation.n_runs == 4 * 7 * 3


def test_h1_shuffled_runs_give_small_rho(tmp_path):
    rng = np.random.default_rng(3)
    task_ids = list(range(1, 41))
    extractability = dict(zip(task_ids, np.geomspace(0.3, 3.0, 40)))
    noise = {task_id: rng.uniform() for task_id in task_ids}  # unrelated to extractability
    run = write_run(
        tmp_path / "run",
        tasks={task_id: f"task-{task_id}" for task_id in task_ids},
        rates=(0.0, 0.1),
        seeds=2,
        use=lambda task_id, rate, seed: noise[task_id],
        extractability=extractability,
    )
    correlation = quick([run]).h1["sample"]["toy_synthetic"]["rate0"].correlation
    assert correlation.n == 40
    assert abs(correlation.rho) < 0.3
    assert correlation.ci_low < 0 < correlation.ci_high


def test_h1_per_group_and_pooled(tmp_path):
    first = write_run(tmp_path / "a", name="model_a")
    second = write_run(tmp_path / "b", name="model_b", extractability={k: v * 1.1 for k, v in RELATIVE_EXTRACTABILITY.items()})
    analysis = quick([first, second])
    assert set(analysis.h1["sample"]) == {"model_a", "model_b", "pooled"}
    pooled = analysis.h1["sample"]["pooled"]["rate0"].correlation
    assert pooled.n == 8 and pooled.rho > 0.9


def test_h1_with_fewer_than_three_tasks_is_undefined_not_a_crash(tmp_path):
    run = write_run(tmp_path / "run", tasks={1: "contains-1", 2: "first-last"}, extractability={1: 2.0, 2: 0.5})
    correlation = quick([run]).h1["sample"]["toy_synthetic"]["rate0"].correlation
    assert not correlation.defined and correlation.n == 2
    assert "ρ is undefined (only 2 task(s))" in report_text([run])


def test_failed_and_dropped_runs_are_listed_and_excluded(tmp_path):
    run = write_run(
        tmp_path / "run",
        neither=lambda task_id, rate, seed: 0.3 if (task_id, rate, seed) == (2, 0.1, 1) else 0.95,
        failed={(3, 0.01, 0): 42},
        eval_config={"failed_neither_threshold": 0.7, "use_target_threshold": 0.9},
    )
    analysis = quick([run])
    failed, dropped, kept = analysis.filtered.failed, analysis.filtered.dropped, analysis.filtered.kept
    assert failed[["task_id", "s_only_rate", "seed", "failed_iteration"]].values.tolist() == [[3, 0.01, 0, 42]]
    assert dropped[["task_id", "s_only_rate", "seed"]].values.tolist() == [[2, 0.1, 1]]
    assert len(kept) == 4 * 7 * 3 - 2
    assert kept.query("task_id == 2 and s_only_rate == 0.1 and seed == 1").empty
    cell = analysis.summary.query("task_id == 2 and s_only_rate == 0.1")
    assert int(cell["n_seeds"].iloc[0]) == 2
    text = report_text([run])
    assert "1 run(s) failed numerically" in text and "| 42 |" in text
    assert "1 run(s) never learned the task" in text and "0.300 (sample)" in text


def test_neither_filter_threshold_can_be_overridden(tmp_path):
    run = write_run(tmp_path / "run", neither=lambda task_id, rate, seed: 0.5 if seed == 0 else 0.95)
    assert quick([run]).filtered.dropped.empty  # config threshold 0.0
    dropped = quick([run], failed_neither_threshold=0.7).filtered.dropped
    assert len(dropped) == 4 * 7 and set(dropped["seed"]) == {0}


def test_dropped_run_is_judged_on_sample_and_dropped_from_greedy_too(tmp_path):
    run = write_run(
        tmp_path / "run",
        decodings=("sample", "greedy"),
        neither=lambda task_id, rate, seed: 0.1 if (task_id, rate, seed) == (1, 0.0, 0) else 0.95,
    )
    filtered = filter_runs(run_scores(load_run(run)), 0.5)
    assert len(filtered.dropped) == 1
    assert filtered.kept.query("task_id == 1 and s_only_rate == 0.0 and seed == 0").empty


def test_h2_evidence_required_and_rising_rho(tmp_path):
    use = lambda task_id, rate, seed: {1: 0.95, 2: 0.2 + rate, 3: 0.5 + rate, 5: min(1.0, 0.6 + 2 * rate)}[task_id]  # noqa: E731
    analysis = quick([write_run(tmp_path / "run", use=use)], use_target_threshold=0.9)
    table = analysis.h2["sample"].set_index("task_id")
    assert table.loc[1, "evidence_required"] == 0.0
    assert np.isnan(table.loc[2, "evidence_required"])  # reaches only 0.7
    assert table.loc[3, "evidence_required"] == 0.5
    assert table.loc[5, "evidence_required"] == 0.2  # 0.6 + 2 · 0.2 = 1.0 ≥ 0.9, 0.1 gives 0.8
    assert table.loc[3, "rho"] == pytest.approx(1.0) and table.loc[3, "p_value"] < 1e-6
    assert np.isnan(table.loc[1, "rho"])  # constant use_target


def test_use_target_is_mean_of_s_only_and_t_only(tmp_path):
    scores = run_scores(load_run(write_run(tmp_path / "run")))
    np.testing.assert_allclose(scores["use_target"], (scores["s_only"] + scores["t_only"]) / 2)
    row = scores.query("task_id == 1 and s_only_rate == 0.0 and seed == 1").iloc[0]
    assert row["use_target"] == pytest.approx(monotone_use(1, 0.0, 1))


def test_scores_have_one_row_per_run_present_in_a_ragged_sweep(tmp_path):
    results = pd.read_csv(write_run(tmp_path / "run", tasks={1: "contains-1", 2: "first-last"}, rates=(0.0, 0.1), seeds=2) / "results.csv")
    ragged = results[~((results["task_id"] == 2) & (results["s_only_rate"] == 0.1))]  # task 2 never ran rate 0.1
    scores = scores_by_run(ragged)
    assert len(scores) == 6  # not the 8 of tasks × rates × seeds
    assert (scores["status"] == "ok").all() and scores["task_name"].notna().all()


def test_toy_summary_table_is_the_reports_use_target(tmp_path):
    from rlbias_jax.analysis.summary import use_target_table

    results = pd.read_csv(write_run(tmp_path / "run", rates=(0.0, 0.1), seeds=3, decodings=("sample", "greedy")) / "results.csv")
    table = use_target_table(results.to_dict("records"))
    scores = scores_by_run(results).query("decoding == 'sample'")
    assert list(table) == [(task, rate) for task in TASKS for rate in (0.0, 0.1)]
    assert table[(1, 0.1)] == pytest.approx([monotone_use(1, 0.1, seed) for seed in range(3)])
    assert sum(table.values(), []) == scores["use_target"].tolist()


def test_extractability_uses_configured_probe_mode_and_layer(tmp_path):
    analysis = quick([write_run(tmp_path / "run")])
    used = analysis.extractability.set_index("task_id")["relative_extractability"].to_dict()
    assert used == RELATIVE_EXTRACTABILITY  # policy mode rows, not the frozen ones (scaled)
    assert "probe mode 'policy', layer -1" in analysis.extractability_notes["toy_synthetic"]


# ---------------------------------------------------------------------------
# Bad input


def test_missing_results_names_the_file(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "results.csv").unlink()
    with pytest.raises(ReportError, match=r"results\.csv: missing"):
        write_report([run])


def test_missing_manifest_is_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"manifest\.json: missing"):
        write_report([tmp_path / "empty"])


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("manifest.json", "{not json", r"manifest\.json: corrupt JSON"),
        ("results.csv", "task_id,score\n1,0.5\n", r"results\.csv: corrupt \(missing columns"),
        ("results.csv", "", r"results\.csv: corrupt CSV"),
        ("curves.csv", "task_id,task_name\n1,a\n", r"curves\.csv: corrupt \(missing columns"),
        ("extractability.csv", "task_id,task_name,probe_mode,layer,relative_extractability\n1,a,policy,-1,abc\n", r"extractability\.csv: corrupt \(non-numeric"),
    ],
)
def test_corrupt_tables_name_the_file(tmp_path, file, content, message):
    run = write_run(tmp_path / "run")
    (run / file).write_text(content)
    with pytest.raises(ReportError, match=message):
        write_report([run])


def test_results_with_a_missing_partition_or_bad_value_are_corrupt(tmp_path):
    run = write_run(tmp_path / "run")
    results = pd.read_csv(run / "results.csv")
    results.drop(index=3).to_csv(run / "results.csv", index=False)
    with pytest.raises(ReportError, match=r"results\.csv: corrupt \(task 1, rate 0, seed 0, sample lacks"):
        load_run(run)
    results.assign(partition=results["partition"].replace("t_only", "target")).to_csv(run / "results.csv", index=False)
    with pytest.raises(ReportError, match="unknown partition 'target'"):
        load_run(run)


def test_mixed_experiment_kinds_and_duplicate_names_are_refused(tmp_path):
    toy = write_run(tmp_path / "toy", name="toy_run")
    nl = write_run(tmp_path / "nl", name="nl_run", experiment="nl")
    with pytest.raises(ReportError, match="cannot pool runs of different experiment kinds"):
        write_report([toy, nl])
    twin = write_run(tmp_path / "twin", name="toy_run")
    with pytest.raises(ReportError, match="same run name 'toy_run'"):
        write_report([toy, twin])


def test_every_run_excluded_is_a_clear_error(tmp_path):
    run = write_run(tmp_path / "run", tasks={1: "contains-1"}, rates=(0.0,), seeds=1, failed={(1, 0.0, 0): 3})
    with pytest.raises(ReportError, match="no usable runs"):
        write_report([run])
    with pytest.raises(ReportError, match="use_target_threshold must be a finite number"):
        write_report([run], use_target_threshold=float("nan"))


def test_analysis_reads_only_tables():
    """The analysis package never imports the packages that produce the tables (DESIGN.md)."""
    import ast

    package = Path(__file__).resolve().parents[1] / "rlbias_jax" / "analysis"
    forbidden = ("rlbias_jax.rl", "rlbias_jax.models", "rlbias_jax.tasks", "rlbias_jax.probing")
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            assert not any(name.startswith(forbidden) for name in names), f"{source.name} imports {names}"


def test_partial_run_is_reported_as_partial(tmp_path):
    run = write_run(tmp_path / "run", status="running", tasks={1: "contains-1", 2: "first-last", 3: "prefix-duplicate"})
    (run / "curves.csv").unlink()  # allowed for a partial run
    blocks = build_blocks(quick([run]), {})
    text = to_markdown(blocks)
    assert "**PARTIAL**" in text and "status 'running'" in text and "Tasks completed: [1, 2, 3]" in text
    assert "curves.csv is missing (partial run)" in text
    assert '<p class="alert">⚠️ <strong>PARTIAL</strong>' in to_html(blocks, "title")


def test_complete_run_without_curves_is_an_error(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "curves.csv").unlink()
    with pytest.raises(ReportError, match=r"curves\.csv: missing"):
        write_report([run])


def test_run_without_extractability_skips_h1(tmp_path):
    run = write_run(tmp_path / "run", extractability=None)
    text = write_report([run]).read_text()
    assert "H1 (extractability) is not tested" in text
    assert not (run / "figures" / "b_use_vs_extractability.png").exists()
    assert (run / "figures" / "a_scores_vs_rate.png").exists()


# ---------------------------------------------------------------------------
# End to end


def test_write_report_end_to_end(tmp_path):
    run = write_run(tmp_path / "run", decodings=("sample", "greedy"))
    out = tmp_path / "out"
    report = write_report([run], out)
    assert report == out / "report.md"
    text = report.read_text()
    html = (out / "report.html").read_text()
    for stem in ("a_scores_vs_rate", "a_scores_vs_rate_greedy", "b_use_vs_extractability", "c_relative_extractability", "d_training_curves"):
        for suffix in ("png", "svg"):
            path = out / "figures" / f"{stem}.{suffix}"
            assert path.stat().st_size > 1000, path
        assert f"figures/{stem}.png" in text and f'src="figures/{stem}.png"' in html
    assert "Spearman ρ = 1.00" in text and "The data point in the direction of H1" in text  # n = 4: p ≥ 0.083
    assert "308.6" in text and "jax 0.10.2" in text and "cpu/cpu" in text
    assert "PARTIAL" not in text
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "<h2>Summary</h2>" in html


def test_report_is_deterministic(tmp_path):
    run = write_run(tmp_path / "run", seeds=2, rates=(0.0, 0.1, 0.5))
    assert report_text([run]) == report_text([run])  # the bootstrap has a fixed seed


def test_figures_have_labelled_axes_legends_and_no_overlapping_text(tmp_path):
    first = write_run(tmp_path / "a", name="model_a")
    second = write_run(tmp_path / "b", name="model_b", extractability={k: v * 1.1 for k, v in RELATIVE_EXTRACTABILITY.items()})
    for runs in ([first], [first, second]):
        analysis = quick(runs)
        extractability = {(r.group, r.task_id): r.relative_extractability for r in analysis.extractability.itertuples()}
        drawn = [
            figures.figure_scores_vs_rate(analysis.summary, extractability, "sample"),
            figures.figure_use_vs_extractability(analysis.headline_h1(), "sample"),
            figures.figure_extractability_bars(analysis.extractability, "probe mode 'policy', layer -1"),
            figures.figure_training_curves(load_run(first).curves, "model_a"),
        ]
        for figure in drawn:
            assert figures.readability_problems(figure) == [], figure.get_suptitle()
            assert figure.legends or any(axis.get_legend() for axis in figure.axes)
            for axis in figure.axes:
                if axis.get_label() == "<colorbar>":
                    assert axis.get_ylabel()
                    continue
                # A label on the axis, on an axis sharing it, or for the whole figure (supxlabel).
                x_labels = [a.get_xlabel() for a in axis.get_shared_x_axes().get_siblings(axis)]
                y_labels = [a.get_ylabel() for a in axis.get_shared_y_axes().get_siblings(axis)]
                x_labels.append(figure.get_supxlabel())
                y_labels.append(figure.get_supylabel())
                assert any(x_labels) and any(y_labels), figure.get_suptitle()
                for label in filter(None, x_labels + y_labels):
                    assert label == "task" or "(" in label, label  # units in parentheses, except categories
