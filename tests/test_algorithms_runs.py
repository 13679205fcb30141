"""GRPO and RLOO end to end (issue 16): bad `[algorithm]` input is one line before compute;
tiny GRPO/RLOO sweeps run through the compiled program; `rlbias reproduce` says bitwise
equal on the same machine and names exactly the cell of a hand-edited results.csv; a report
over run directories of two algorithms shows them side by side with one figure."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from rlbias_jax.cli import main
from rlbias_jax.experiments.reproduce import choose_runs, compare_results
from subprocess_runs import TINY, read_rows, rlbias, subprocess_env
from test_analysis import write_run


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    return subprocess_env(request, tmp_path_factory)


def _config(tmp_path, text: str = TINY, name: str = "tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------
# Bad input: one line, before compute


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.name=\"a2c\""], "algorithm.name: unknown algorithm 'a2c'; known: ppo, grpo, rloo"),
    (["algorithm.name=\"grpo\"", "algorithm.group_size=3"],
     "algorithm.group_size: (3) must divide ppo.episodes_per_iteration (16)"),
    (["algorithm.name=\"rloo\"", "algorithm.group_size=1"], "algorithm.group_size: must be >= 2 for rloo"),
    (["algorithm.name=\"grpo\"", "algorithm.group_size=-2"], "algorithm.group_size: must be >= 0"),
    (["algorithm.objective=\"reinforce\""], "algorithm.objective: 'reinforce' applies to grpo and rloo"),
    (["algorithm.kl_coef=0.1"], "algorithm.kl_coef: applies to grpo and rloo"),
    (["algorithm.name=\"rloo\"", "algorithm.normalisation=\"none\""], "algorithm.normalisation: 'none' applies to grpo only"),
    (["algorithm.name=\"grpo\"", "algorithm.normalisation=\"mad\""], "algorithm.normalisation: must be one of ['std', 'none']"),
    (["algorithm.name=\"grpo\"", "algorithm.kl_coef=-1"], "algorithm.kl_coef: must be >= 0"),
    (["algorithm.nme=\"grpo\""], "algorithm.nme: unknown key; did you mean 'name'?"),
])
def test_bad_algorithm_input_is_one_line(tmp_path, capsys, overrides, message):
    config = _config(tmp_path)
    args = [item for override in overrides for item in ("--set", override)]
    for command in (["validate"], ["train", "--out-dir", str(tmp_path / "runs")]):
        assert main([*command, str(config), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rlbias: error: {message}"), err
        assert err.count("\n") == 1
    assert not (tmp_path / "runs").exists(), "no run directory before the config is valid"


def test_bad_algorithm_is_one_line_from_a_subprocess(tmp_path):
    config = _config(tmp_path, TINY + '[algorithm]\nname = "grpo"\ngroup_size = 5\n')
    result = subprocess.run([sys.executable, "-m", "rlbias_jax.cli", "run", str(config)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("rlbias: error: algorithm.group_size: (5) must divide ppo.episodes_per_iteration (16): "
                                     "episodes count responses, G per prompt")


def test_validate_shows_the_algorithm_section(tmp_path, capsys):
    assert main(["validate", str(_config(tmp_path)), "--set", "algorithm.name=\"rloo\""]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["algorithm"] == {"name": "rloo", "group_size": 0, "normalisation": "std", "objective": "clipped", "kl_coef": 0.0}


# ---------------------------------------------------------------------------
# Tiny GRPO and RLOO sweeps through the compiled program


@pytest.mark.slow
@pytest.mark.parametrize("section", [
    '[algorithm]\nname = "grpo"\ngroup_size = 4\nkl_coef = 0.05\n',
    '[algorithm]\nname = "rloo"\ngroup_size = 4\nobjective = "reinforce"\n',
], ids=["grpo", "rloo"])
def test_tiny_critic_free_sweep_runs(tmp_path, env, section):
    config = _config(tmp_path, TINY + section)
    result = rlbias("train", config, "--out-dir", tmp_path, env=env)
    assert "responses per prompt" in result.stdout
    run = tmp_path / "tiny"
    rows = read_rows(run / "results.csv")
    assert len(rows) == 4 * 4 and all(row["status"] == "ok" for row in rows)
    curves = read_rows(run / "curves.csv")
    assert len(curves) == 4 * 6
    assert "loss/kl" in curves[0] and "loss/value" not in curves[0]
    if "kl_coef" in section:
        assert all(float(row["objective/kl_loss"]) >= 0 for row in curves)
        assert any(float(row["objective/kl_loss"]) > 0 for row in curves)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["algorithm"]["name"] in ("grpo", "rloo")


# ---------------------------------------------------------------------------
# rlbias reproduce


def test_choose_runs_is_deterministic_and_spread():
    assert choose_runs(8, None) == list(range(8))
    assert choose_runs(8, 20) == list(range(8))
    assert choose_runs(8, 1) == [0]
    assert choose_runs(8, 2) == [0, 7]
    assert choose_runs(9, 3) == [0, 4, 8]


def _rows(scores: dict[tuple, float]) -> list[dict]:
    return [{"task_id": "1", "task_name": "t", "s_only_rate": str(rate), "seed": str(seed), "decoding": "sample",
             "partition": partition, "score": repr(score), "status": "ok"} for (rate, seed, partition), score in scores.items()]


def test_statistical_comparison_uses_the_seed_standard_error():
    original = {(0.0, 0, "both"): 0.5, (0.0, 1, "both"): 0.7, (0.0, 2, "both"): 0.9,  # sd 0.2
                (0.5, 0, "both"): 0.80, (0.5, 1, "both"): 0.80, (0.5, 2, "both"): 0.80}  # sd 0
    # rate 0: mean moves by 0.3 < 3 · 0.2 · sqrt(2/3) = 0.49; rate 0.5: any move is outside sd 0
    moved = {**original, (0.0, 0, "both"): 1.4, (0.5, 1, "both"): 0.81}
    result = compare_results(_rows(original), _rows(moved), expect_bitwise=False)
    assert not result["bitwise_equal"] and result["verdict"] == "differs"
    assert [(c["s_only_rate"], c["partition"]) for c in result["differing_cells"]] == [("0.5", "both")]
    # the same comparison expecting bitwise names both cells
    exact = compare_results(_rows(original), _rows(moved), expect_bitwise=True)
    assert sorted(c["s_only_rate"] for c in exact["differing_cells"]) == ["0.0", "0.5"]
    assert compare_results(_rows(original), _rows(original), expect_bitwise=True)["verdict"] == "reproduced"


@pytest.mark.slow
def test_reproduce_is_bitwise_and_finds_an_edited_cell(tmp_path, env):
    config = _config(tmp_path)
    rlbias("train", config, "--out-dir", tmp_path, env=env)
    run = tmp_path / "tiny"
    result = rlbias("reproduce", run, env=env)
    assert "bitwise equal: results.csv of all runs" in result.stdout and "verdict: reproduced" in result.stdout
    document = json.loads((run / "reproduce.json").read_text())
    assert document["expectation"] == "bitwise" and document["bitwise_equal"] and document["bytes_equal"]
    assert document["differing_cells"] == []
    assert not [p for p in tmp_path.iterdir() if ".reproduce-" in p.name], "the re-run's folder is removed"

    # one score changed by hand: exactly that cell differs
    rows = read_rows(run / "results.csv")
    edited = rows[5]
    edited["score"] = repr(float(edited["score"]) + 0.125)
    with open(run / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    result = rlbias("reproduce", run, env=env, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "not bitwise equal" in result.stdout and "verdict: differs" in result.stdout
    document = json.loads((run / "reproduce.json").read_text())
    (cell,) = document["differing_cells"]
    assert (cell["task_id"], cell["s_only_rate"], cell["decoding"], cell["partition"]) == (
        edited["task_id"], edited["s_only_rate"], edited["decoding"], edited["partition"])
    assert cell["runs"] == 2 and cell["difference"] == pytest.approx(-0.125 / 2)  # the cell's mean over its 2 seeds

    # a deterministic subset: the first and the last run
    result = rlbias("reproduce", run, "--runs", "2", env=env, check=False)
    document = json.loads((run / "reproduce.json").read_text())
    assert document["runs"] == [0, 3] and document["rows_compared"] == 2 * 4
    assert document["expectation"] == "statistical"  # a smaller batch of runs: the default path is not batch-invariant


def test_reproduce_refuses_an_unfinished_run(tmp_path, capsys):
    run = write_run(tmp_path / "partial", status="running")
    assert main(["reproduce", str(run)]) == 2
    assert "not a finished run" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Reports across algorithms


def _with_algorithm(path, name: str):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["config"]["algorithm"] = {"name": name}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_report_across_algorithms_shows_them_side_by_side(tmp_path, capsys):
    ppo = _with_algorithm(write_run(tmp_path / "toy_ppo", name="toy_ppo"), "ppo")
    grpo = _with_algorithm(write_run(tmp_path / "toy_grpo", name="toy_grpo", use=lambda t, r, s: 0.9 if t == 1 else 0.1), "grpo")
    assert main(["report", str(ppo), str(grpo), "--out", str(tmp_path / "report")]) == 0
    capsys.readouterr()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Algorithms side by side" in report
    section = report.split("## Algorithms side by side", 1)[1].split("\n## ", 1)[0]
    assert "| ppo | sample |" in section and "| grpo | sample |" in section
    assert "figures/e_use_vs_extractability_by_algorithm.png" in section
    assert (tmp_path / "report" / "figures" / "e_use_vs_extractability_by_algorithm.png").is_file()
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    scopes = {(t["scope"], t["algorithm"]) for t in stats["tests"]}
    assert {("toy_ppo", "ppo"), ("toy_grpo", "grpo"), ("algorithm ppo", "ppo"), ("algorithm grpo", "grpo"),
            ("pooled", "grpo+ppo")} == scopes
    # the per-algorithm H1 equals that algorithm's own run directory's test
    by_scope = {(t["scope"], t["test"], t["feature_use"]): t for t in stats["tests"]}
    for name in ("ppo", "grpo"):
        assert by_scope[(f"algorithm {name}", "H1", "rate0")]["rho"] == by_scope[(f"toy_{name}", "H1", "rate0")]["rho"]
    # runs of different algorithms are never pooled as replicates: the pooled test has a point per (algorithm, task)
    assert by_scope[("pooled", "H1", "rate0")]["n"] == 8


def test_report_of_one_algorithm_has_no_side_by_side_section(tmp_path, capsys):
    run = write_run(tmp_path / "toy_one", name="toy_one")
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    assert "Algorithms side by side" not in (run / "report.md").read_text()
    stats = json.loads((run / "stats.json").read_text())
    assert {t["algorithm"] for t in stats["tests"]} == {"ppo"}
