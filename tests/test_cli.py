"""End-to-end smoke runs of the CLI on configs/toy_smoke.toml."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlbias_jax.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "toy_smoke.toml")


def test_train_end_to_end_writes_a_readable_run(tmp_path, capsys):
    assert main(["train", SMOKE, "--out-dir", str(tmp_path), "--no-report"]) == 0
    run = tmp_path / "toy_smoke"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["config"]["task"]["task_ids"] == [1, 3]
    assert manifest["packages"]["jax"] and manifest["devices"]
    rows = list(csv.DictReader(open(run / "results.csv")))
    # 2 tasks × 2 rates × 1 seed × 2 decodings × 4 partitions
    assert len(rows) == 32
    assert {row["partition"] for row in rows} == {"both", "neither", "s_only", "t_only"}
    assert all(0.0 <= float(row["score"]) <= 1.0 for row in rows)
    curves = list(csv.DictReader(open(run / "curves.csv")))
    assert len(curves) == 4 * 4  # 4 runs × 4 iterations
    assert "policy/clipfrac" in curves[0] and "objective/kl" in curves[0]
    # the untrained policies, evaluated on the same partitions before training
    baseline = list(csv.DictReader(open(run / "baseline.csv")))
    assert [(r["task_id"], r["partition"], r["decoding"]) for r in baseline] == [(r["task_id"], r["partition"], r["decoding"]) for r in rows]
    assert [r["score"] for r in baseline] != [r["score"] for r in rows]
    out = capsys.readouterr().out
    assert "use_target" in out and "contains-1" in out
    assert "score before -> after training" in out

    # the run directory is never silently overwritten
    assert main(["train", SMOKE, "--out-dir", str(tmp_path), "--no-report"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_user_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[task]\ntask_ids = [9]\n')
    result = subprocess.run([sys.executable, "-m", "rlbias_jax.cli", "run", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("rlbias: error: task.task_ids")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("content, message", [
    (b"[run]\nname = \"caf\xe9\"\n", "not a UTF-8 text file (byte 17 is 0xe9)"),  # Latin-1, as a Windows editor may save it
    (b"\xff\xfe[\x00r\x00u\x00n\x00]\x00", "not a UTF-8 text file (byte 0 is 0xff)"),  # UTF-16
    (b"[run\nname = 1\n", "invalid TOML"),
    (b"", "the config is empty; it needs at least a [run] section"),
    (b"# only a comment\n\n", "the config is empty; it needs at least a [run] section"),
])
def test_unreadable_or_empty_configs_are_one_line_before_compute(tmp_path, content, message):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "rlbias_jax.cli", "run", str(bad), "--out-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"rlbias: error: {bad}: ")
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == [bad]  # nothing was started


def test_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "rlbias_jax.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("run", "train", "probe", "report", "validate"):
        assert command in result.stdout
