"""Analysis and report on synthetic run directories with known answers.

The run directories are written by hand following docs/run_directory.md, so these
tests pin the input contract as well as the statistics.
"""

from __future__ import annotations

import dataclasses
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
    scores=None,
    accuracies: dict[int, tuple[float, float]] | None = None,
    censored_columns: bool = True,
    probe_config: dict | None = None,
    d_model: int = 256,
) -> Path:
    """A run directory per docs/run_directory.md with use_target given by `use` (both 0.97,
    neither from `neither`, s_only/t_only around use), or with the four scores from
    `scores(task_id, rate, seed) -> dict`. `accuracies`: (s, t) probe accuracy per task
    (default 0.95 both); `censored_columns`: write extractability.csv's censored columns
    as the probing code does (False: an older table without them)."""
    failed = failed or {}
    path.mkdir(parents=True)
    config = {
        "run": {"name": name, "experiment": experiment},
        "task": {"task_ids": list(tasks)},
        "model": {"source": "random", "architecture": "gpt2", "n_layer": 4, "n_head": 4, "d_model": d_model},
        "sweep": {"s_only_rates": list(rates), "seeds": seeds},
        "eval": eval_config or {"greedy": "greedy" in decodings, "failed_neither_threshold": 0.0, "use_target_threshold": 0.9},
        "probe": probe_config or {"mode": "policy"},
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
                if scores is None:
                    use_target = use(task_id, rate, seed)
                    spread = min(0.02, use_target, 1.0 - use_target)  # s-only and t-only differ, their mean is use
                    run_scores_ = {
                        "both": 0.97,
                        "neither": neither(task_id, rate, seed),
                        "s_only": use_target + spread,
                        "t_only": use_target - spread,
                    }
                else:
                    run_scores_ = scores(task_id, rate, seed)
                    use_target = (run_scores_["s_only"] + run_scores_["t_only"]) / 2
                for decoding in decodings:
                    for partition, score in run_scores_.items():
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
        min_accuracy = (probe_config or {}).get("min_accuracy", 0.9)
        for task_id, value in extractability.items():
            accuracy_s, accuracy_t = (accuracies or {}).get(task_id, (0.95, 0.95))
            for mode, layer, scale in (("policy", -1, 1.0), ("frozen", 0, 0.5), ("frozen", -1, 0.8)):
                row = {
                    "task_id": task_id, "task_name": tasks.get(task_id, "x"), "probe_mode": mode, "layer": layer,
                    "mdl_s_bits": 100.0 * value * scale, "mdl_s_sem": 2.0, "mdl_t_bits": 100.0, "mdl_t_sem": 2.0,
                    "relative_extractability": value * scale, "relative_extractability_sem": 0.05 * value,
                    "compression_s": 2.0, "compression_t": 2.0, "accuracy_s": accuracy_s, "accuracy_t": accuracy_t,
                    "uniform_bits": 2000.0, "n_seeds": 3,
                }
                if censored_columns:  # as the probing code writes them
                    reasons = [f"{probe}-probe accuracy {a:.2f} < {min_accuracy:.2f}" for probe, a in (("s", accuracy_s), ("t", accuracy_t)) if a < min_accuracy]
                    row.update(censored=bool(reasons), censored_reason="; ".join(reasons))
                rows.append(row)
        pd.DataFrame(rows).to_csv(path / "extractability.csv", index=False)
    return path


def quick(runs, **kwargs):
    """analyse() with a small bootstrap, for speed."""
    return analyse([load_run(run) if isinstance(run, Path) else run for run in runs], n_boot=300, **kwargs)


def report_text(runs, **kwargs) -> str:
    """report.md's text without drawing figures (drawing is the slow part)."""
    return to_markdown(build_blocks(quick(runs, **kwargs), {}))


def entry(analysis, test: str, scope: str, feature_use: str | None = None, decoding: str = "sample") -> dict:
    """The stats.json entry of one test."""
    (found,) = [
        e for e in analysis.stats["tests"]
        if e["test"] == test and e["scope"] == scope and e["decoding"] == decoding and (feature_use is None or e["feature_use"] == feature_use)
    ]
    return found


# ---------------------------------------------------------------------------
# Statistics with known answers (more in tests/test_stats.py)


def test_spearman_test_monotone_and_undefined():
    test = stats.spearman_test(np.array([0.5, 0.9, 1.3, 2.5]), np.array([0.1, 0.2, 0.7, 0.75]))
    assert test.statistic == pytest.approx(1.0)
    assert test.p_one_sided == pytest.approx(1 / 24)  # exact: 1 of the 4! orderings is as extreme
    assert not stats.spearman_test(np.array([1.0, 2.0]), np.array([1.0, 2.0])).defined
    assert not stats.spearman_test(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.5])).defined


def test_spearman_shuffled_is_small():
    rng = np.random.default_rng(0)
    x = np.arange(400.0)
    test = stats.spearman_test(x, rng.permutation(x), permutations=2000)
    assert abs(test.statistic) < 0.15 and test.p_one_sided > 0.01


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
    assert stats.evidence_required(rates, use, 0.995) == math.inf  # never: ranked after every rate


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
    for view in ("rate0", "average"):
        test = entry(analysis, "H1", "toy_synthetic", view)
        assert test["rho"] == pytest.approx(1.0)
        assert test["p_one_sided"] == pytest.approx(1 / 24) and test["min_p"] == pytest.approx(1 / 24)
        assert test["n"] == 4 and test["verdict"] == "support"
        # a task drawn twice gets two seed resamples: tied x, different y, so ρ < 1 in some resamples
        assert test["ci_high"] == pytest.approx(1.0) and 0.7 < test["ci_low"] < 1.0
    assert test["n_runs"] == 4 * 7 * 3
    # Lovering's second view: the more extractable the target, the less evidence it needs
    evidence = entry(analysis, "H1", "toy_synthetic", "evidence_required")
    required = {p["task_name"]: (p["y"], p["y_never"]) for p in evidence["points"]}
    # monotone_use reaches 0.9 at p = 0 (ratio 2.5), 0.2 (1.3), 0.5 (0.9 and 0.6)
    assert required == {"contains-1": (0.0, False), "first-last": (0.5, False), "prefix-duplicate": (0.2, False), "adjacent-duplicate": (0.5, False)}
    assert evidence["alternative"] == "less" and evidence["rho"] == pytest.approx(-math.sqrt(0.9))  # one tie in y


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
    test = entry(quick([run]), "H1", "toy_synthetic", "rate0")
    assert test["n"] == 40 and test["p_method"].startswith("permutation")
    assert abs(test["rho"]) < 0.3 and test["p_one_sided"] > 0.05
    assert test["ci_low"] < 0 < test["ci_high"]


def test_h1_per_group_and_pooled_over_distinct_models(tmp_path):
    first = write_run(tmp_path / "a", name="model_a")
    second = write_run(tmp_path / "b", name="model_b", d_model=128, extractability={k: v * 1.1 for k, v in RELATIVE_EXTRACTABILITY.items()})
    analysis = quick([first, second])
    assert {e["scope"] for e in analysis.stats["tests"]} == {"model_a", "model_b", "pooled"}
    pooled = entry(analysis, "H1", "pooled", "rate0")
    assert pooled["n"] == 8 and pooled["rho"] > 0.9  # two models: 8 distinct (task, model) points
    assert pooled["p_method"] == "exact (40320 orderings)"


def test_replicates_of_a_task_and_model_are_averaged_before_pooling(tmp_path):
    """Two run directories of the same tasks on the same model: n counts each task once."""
    first = write_run(tmp_path / "a", name="replicate_a", seeds=2)
    second = write_run(tmp_path / "b", name="replicate_b", seeds=3, extractability={k: v * 1.2 for k, v in RELATIVE_EXTRACTABILITY.items()})
    analysis = quick([first, second])
    pooled = entry(analysis, "H1", "pooled", "rate0")
    assert pooled["n"] == 4  # not 8
    assert pooled["n_runs"] == 4 * 7 * (2 + 3)
    points = {p["task_name"]: p for p in pooled["points"]}
    assert points["contains-1"]["x"] == pytest.approx((2.5 + 2.5 * 1.2) / 2)  # replicate ratios averaged
    assert points["contains-1"]["groups"] == ["replicate_a", "replicate_b"]
    # the seeds of both replicates are the point's units: y is their mean at p = 0
    assert points["contains-1"]["y"] == pytest.approx(np.mean([monotone_use(1, 0.0, s) for s in (0, 1)] + [monotone_use(1, 0.0, s) for s in (0, 1, 2)]))
    h2_tasks = entry(analysis, "H2", "pooled")["tasks"]
    assert len(h2_tasks) == 4 and all(t["learned_runs"] == 7 * (2 + 3) for t in h2_tasks)


def test_replicates_probed_in_different_modes_are_refused(tmp_path):
    first = write_run(tmp_path / "a", name="replicate_a")
    second = write_run(tmp_path / "b", name="replicate_b", probe_config={"mode": "frozen"})
    with pytest.raises(ReportError, match="probed in different modes"):
        quick([first, second])


def test_h1_with_fewer_than_three_tasks_is_undefined_not_a_crash(tmp_path):
    run = write_run(tmp_path / "run", tasks={1: "contains-1", 2: "first-last"}, extractability={1: 2.0, 2: 0.5})
    test = entry(quick([run]), "H1", "toy_synthetic", "rate0")
    assert test["rho"] is None and test["n"] == 2 and test["verdict"] == "untestable"
    assert "ρ is undefined (n = 2" in report_text([run])


def test_a_test_without_power_says_so(tmp_path):
    """n = 3 perfectly ordered points: the smallest one-sided exact p is 1/6, so no verdict of support."""
    run = write_run(tmp_path / "run", tasks={1: "contains-1", 2: "first-last", 3: "prefix-duplicate"})
    test = entry(quick([run]), "H1", "toy_synthetic", "rate0")
    assert test["rho"] == pytest.approx(1.0) and test["p_one_sided"] == pytest.approx(1 / 6)
    assert test["min_p"] == pytest.approx(1 / 6) and not test["can_reach_alpha"] and test["verdict"] == "no_power"
    assert "the smallest possible one-sided p is 0.167, so this test cannot reach p < 0.05" in report_text([run])


def test_censored_extractability_is_excluded_from_h1_and_listed(tmp_path):
    accuracies = {2: (0.97, 0.61)}  # first-last's t-probe did not learn
    for censored_columns in (True, False):  # written by the probing code, or computed by the report
        run = write_run(tmp_path / f"run_{censored_columns}", accuracies=accuracies, censored_columns=censored_columns)
        analysis = quick([run])
        test = entry(analysis, "H1", "toy_synthetic", "rate0")
        assert test["n"] == 3 and "first-last" not in {p["task_name"] for p in test["points"]}
        assert test["censored"][0]["label"] == "toy_synthetic: first-last"
        assert test["censored"][0]["reason"] == "t-probe accuracy 0.61 < 0.90" and not test["censored"][0]["included"]
        assert analysis.stats["censored"][0]["reason"] == "t-probe accuracy 0.61 < 0.90"
        text = report_text([run])
        assert "| first-last | policy | 0.600 | t-probe accuracy 0.61 < 0.90 |" in text
        assert "Left out of H1 because their extractability is censored: first-last (t-probe accuracy 0.61 < 0.90)" in text
    included = quick([run], include_censored=True)
    assert entry(included, "H1", "toy_synthetic", "rate0")["n"] == 4
    # the run's own config decides by default, and its probe.min_accuracy sets the bar
    strict = write_run(tmp_path / "strict", censored_columns=False, probe_config={"mode": "policy", "min_accuracy": 0.96},
                       eval_config={"h1_include_censored": False})
    test = entry(quick([strict]), "H1", "toy_synthetic", "rate0")
    assert test["n"] == 0 and len(test["censored"]) == 4 and test["censored"][0]["reason"] == (
        "s-probe accuracy 0.95 < 0.96; t-probe accuracy 0.95 < 0.96")
    lenient = write_run(tmp_path / "lenient", accuracies=accuracies, eval_config={"h1_include_censored": True})
    assert entry(quick([lenient]), "H1", "toy_synthetic", "rate0")["n"] == 4


def constant_trap(task_id: int, rate: float, seed: int) -> dict:
    """The issue's trap: spurious users below p = 0.5, constant 'descending' policies at 0.5
    (both 0, neither and s_only high, t_only 0: use_target 0.46, which once read as H2 support).
    As in toy_default, the spurious runs reject more s-only prompts as p grows (seen in
    training) while t-only stays 0: use_target rises, target use does not."""
    if rate < 0.5:
        return {"both": 0.97, "neither": 0.96, "s_only": 0.002 + 1.5 * rate + 0.001 * seed, "t_only": 0.0}
    return {"both": 0.0, "neither": 0.93, "s_only": 0.92 - 0.01 * seed, "t_only": 0.0}


def test_h2_is_never_supported_by_constant_policies(tmp_path):
    run = write_run(tmp_path / "run", rates=(0.0, 0.01, 0.1, 0.5), scores=constant_trap)
    analysis = quick([run])
    counts = pd.DataFrame(analysis.stats["behaviour_counts"]).query("decoding == 'sample'")
    assert (counts.query("s_only_rate == 0.5")["constant"] == 3).all()
    assert (counts.query("s_only_rate < 0.5")["spurious"] == 3).all()
    h2 = entry(analysis, "H2", "toy_synthetic")
    assert h2["verdict"] != "support"
    for task in h2["tasks"]:
        assert task["learned_runs"] == 9 and task["excluded_runs"] == 3 and task["rates_with_learned_runs"] == [0.0, 0.01, 0.1]
        assert task["evidence_required"] is None and task["evidence_never"]
    text = report_text([run])
    assert "12 constant" in text and "| contains-1 | 0.5 | 0 | 0 | 0 | 3 | 0 | 0 |" in text
    assert "supports the hypothesis" not in text.split("## Runs")[0]
    # A table of constant policies only: nothing counts, H2 is untestable, not supported
    only_constant = write_run(tmp_path / "constant", rates=(0.0, 0.5), scores=lambda t, r, s: constant_trap(t, 0.5, s))
    h2 = entry(quick([only_constant]), "H2", "toy_synthetic")
    assert h2["verdict"] == "untestable" and h2["n"] == 0 and all(t["learned_runs"] == 0 for t in h2["tasks"])


def test_h2_counts_target_users_and_is_tested_within_seeds(tmp_path):
    use = lambda task_id, rate, seed: {1: 0.95, 2: 0.2 + rate, 3: 0.5 + rate, 5: min(1.0, 0.6 + 2 * rate)}[task_id]  # noqa: E731
    analysis = quick([write_run(tmp_path / "run", use=use)], use_target_threshold=0.9)
    h2 = entry(analysis, "H2", "toy_synthetic")
    tasks = {t["task_id"]: t for t in h2["tasks"]}
    assert tasks[1]["evidence_required"] == 0.0
    assert tasks[2]["evidence_required"] is None and tasks[2]["evidence_never"]  # reaches only 0.7
    assert tasks[3]["evidence_required"] == 0.5
    assert tasks[5]["evidence_required"] == 0.2  # 0.6 + 2 · 0.2 = 1.0 ≥ 0.9, 0.1 gives 0.8
    # target users (all four ≥ 0.8): task 1 always, task 2 never (ρ undefined, although use_target rises),
    # task 3 only at p = 0.5 (1 of 7 rates per seed), task 5 at p = 0.2 and 0.5 (2 of 7)
    assert tasks[1]["rho"] is None and tasks[2]["rho"] is None
    assert tasks[3]["rho"] == pytest.approx(math.sqrt(3 / 8)) and tasks[5]["rho"] == pytest.approx(math.sqrt(5 / 8))
    # 3 seeds × 7 rates: (7!)³ orderings within seeds, so random ones; the observed ordering is the most
    # extreme, with probability (1/7)³ for task 3 and (1/21)³ for task 5
    assert tasks[3]["p_method"].startswith("permutation within seeds")
    assert tasks[3]["p_one_sided"] == tasks[3]["min_p"] == pytest.approx(7**-3, abs=0.001)
    assert tasks[5]["p_one_sided"] == tasks[5]["min_p"] == pytest.approx(21**-3, abs=0.0005)
    assert h2["n"] == 2 and h2["verdict"] == "support"
    assert h2["rho"] == pytest.approx((math.sqrt(3 / 8) + math.sqrt(5 / 8)) / 2)


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
    excluded = analysis.behaviour.set_index(["task_id", "s_only_rate", "seed"])["excluded_by"]
    assert excluded[(3, 0.01, 0)] == "failed" and excluded[(2, 0.1, 1)] == "filter" and (excluded == "").sum() == 4 * 7 * 3 - 2
    text = report_text([run])
    assert "1 run(s) failed numerically" in text and "| 42 |" in text
    assert "1 run(s) never learned the task" in text and "min(both, neither) = 0.300 (sample)" in text


def test_failed_run_filter_judges_min_of_both_and_neither_for_the_toy_and_neither_for_nl(tmp_path):
    low_both = lambda task_id, rate, seed: {"both": 0.3, "neither": 0.95, "s_only": 0.9, "t_only": 0.9} if seed == 0 else {  # noqa: E731
        "both": 0.97, "neither": 0.95, "s_only": 0.9, "t_only": 0.9}
    eval_config = {"failed_neither_threshold": 0.7}
    toy = quick([write_run(tmp_path / "toy", scores=low_both, eval_config=eval_config)]).filtered.dropped
    assert len(toy) == 4 * 7 and set(toy["seed"]) == {0} and set(toy["judged_by"]) == {"min(both, neither)"}
    nl = quick([write_run(tmp_path / "nl", experiment="nl", scores=low_both, eval_config=eval_config)]).filtered.dropped
    assert nl.empty  # the paper's NL filter reads neither only


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


def test_behaviour_csv_and_stats_json_are_written_and_the_report_reads_stats(tmp_path):
    run = write_run(tmp_path / "run", rates=(0.0, 0.5), scores=constant_trap)
    out = tmp_path / "out"
    text = write_report([run], out).read_text()
    table = pd.read_csv(out / "behaviour.csv")
    assert list(table.columns) == [
        "run", "task_id", "task_name", "s_only_rate", "seed", "decoding", "both", "neither", "s_only", "t_only",
        "behaviour", "use_target", "use_spurious", "in_feature_use", "excluded_by",
    ]
    constant = table.query("task_id == 1 and s_only_rate == 0.5 and seed == 0").iloc[0]
    assert constant["behaviour"] == "constant" and not constant["in_feature_use"] and constant["excluded_by"] == "behaviour"
    assert constant["use_target"] == pytest.approx(0.46) and constant["use_spurious"] == pytest.approx(0.54)
    document = json.loads((out / "stats.json").read_text())
    for test in document["tests"]:
        for key in ("scope", "decoding", "feature_use", "n", "rho", "p_one_sided", "ci_low", "ci_high", "verdict"):
            assert key in test, key
    assert document["settings"]["runs"]["toy_synthetic"]["behaviour_threshold"] == 0.8
    # the statistics shown are stats.json's: change a number there and the rendering follows
    analysis = quick([run])
    edited = json.loads(json.dumps(analysis.stats))
    entry_ = next(e for e in edited["tests"] if e["test"] == "H2")
    entry_.update(rho=0.123, n=7, p_one_sided=0.5, p_method="exact (2 orderings)", min_p=0.5, verdict_text="edited verdict")
    rendered = to_markdown(build_blocks(dataclasses.replace(analysis, stats=edited), {}))
    assert "Mean within-task ρ = 0.12 over 7 task(s)" in rendered and "edited verdict" in rendered
    assert "Behaviour of the 24 trained runs (sample decoding, τ = 0.8): 0 target, 12 spurious, 0 mixed, 12 constant" in text


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
    # n = 4 perfectly ordered: one-sided exact p = 1/24 < 0.05
    assert "Spearman ρ = 1.00 (hypothesis ρ > 0), one-sided p = 0.0417 (exact)" in text and "supports the hypothesis" in text
    assert (out / "stats.json").is_file() and (out / "behaviour.csv").is_file()
    assert "308.6" in text and "jax 0.10.2" in text and "cpu/cpu" in text
    assert "PARTIAL" not in text
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "<h2>Summary</h2>" in html


def test_report_is_deterministic(tmp_path):
    run = write_run(tmp_path / "run", seeds=2, rates=(0.0, 0.1, 0.5))
    assert report_text([run]) == report_text([run])  # the bootstrap has a fixed seed


def test_figures_have_labelled_axes_legends_and_no_overlapping_text(tmp_path):
    first = write_run(tmp_path / "a", name="model_a", accuracies={2: (0.97, 0.61)})
    second = write_run(tmp_path / "b", name="model_b", d_model=128, extractability={k: v * 1.1 for k, v in RELATIVE_EXTRACTABILITY.items()})
    for runs in ([first], [first, second]):
        analysis = quick(runs)
        extractability = {(r.group, r.task_id): r.relative_extractability for r in analysis.extractability.itertuples()}
        headline = [entry(analysis, "H1", analysis.headline_scope, view) for view in ("rate0", "average")]
        drawn = [
            figures.figure_scores_vs_rate(analysis.summary, extractability, "sample"),
            figures.figure_use_vs_extractability(headline, "sample"),
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
