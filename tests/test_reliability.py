"""Reliability of a sweep: kill and resume, corrupt checkpoints, numerical faults, safe outputs.

The end-to-end tests run `rlbias train` in subprocesses on a tiny config (4 runs, 6
iterations in chunks of 2; tests/subprocess_runs.py) and compare run directories
byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbias_jax.checkpoints import CheckpointError, SweepCheckpoints
from rlbias_jax.runs import RunDirError, RunLock, atomic_write_text, check_run_dir, config_differences, resume_key
from subprocess_runs import TINY, assert_same_outputs, read_rows, rlbias, start_and_kill_at_checkpoint, subprocess_env


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    return subprocess_env(request, tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def clean_run(tiny_config, env, tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny config (the reference)."""
    out = tmp_path_factory.mktemp("clean")
    rlbias("train", tiny_config, "--out-dir", out, env=env)
    return out / "tiny"


# ---------------------------------------------------------------------------
# kill and resume


@pytest.mark.slow
def test_killed_sweep_resumes_to_bitwise_identical_results(clean_run, tiny_config, env, tmp_path):
    args = ["train", tiny_config, "--out-dir", tmp_path]
    run = tmp_path / "tiny"
    # SIGKILL in the middle of the sweep, right after the first checkpoint
    start_and_kill_at_checkpoint(args, env, run / "checkpoints" / "2")
    assert not (run / "results.csv").exists()
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    # resume, and SIGKILL again after the last chunk (before evaluation ends)
    start_and_kill_at_checkpoint([*args, "--resume"], env, run / "checkpoints" / "6")
    assert not (run / "results.csv").exists()
    # resume to the end
    result = rlbias(*args, "--resume", env=env)
    assert "resumed from the checkpoint at iteration 6" in result.stdout

    assert_same_outputs(run, clean_run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed_at"]) == 2
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [4, 6]  # keep the last 2


@pytest.mark.slow
def test_resume_with_only_corrupt_checkpoints_is_a_one_line_error(clean_run, tiny_config, env, tmp_path):
    run = tmp_path / "tiny"
    shutil.copytree(clean_run, run)
    for data_file in (run / "checkpoints").glob("*/state/d/*"):
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    result = rlbias("train", tiny_config, "--out-dir", tmp_path, "--resume", env=env, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rlbias: error: no usable checkpoint in") and "iterations [4, 6]" in last, result.stderr[-2000:]
    assert "checkpoint at iteration 6 is unusable" in result.stdout


# ---------------------------------------------------------------------------
# numerical faults


NAN_SCRIPT = """
import sys
import jax, jax.numpy as jnp
from rlbias_jax.config import load_config
from rlbias_jax.experiments import runner
from rlbias_jax.rl import sweep

POISON_RUN, POISON_AT = 1, 2
make_train_chunk = sweep.make_train_chunk

def poisoned_maker(build_policy, config, shared_axis, **options):
    chunk = make_train_chunk(build_policy, config, shared_axis, **options)

    def poisoned(states, data, shared, length):
        if int(states.iteration[0]) == POISON_AT:
            # NaN into one weight matrix of one run, on its device, before the compiled chunk runs
            params = states.train.params
            kernel = params["lm"]["h_0"]["mlp"]["c_fc"]["kernel"]
            bad = jax.device_put(kernel.at[POISON_RUN, 0, 0].set(jnp.nan), kernel.sharding)
            params = {**params, "lm": {**params["lm"], "h_0": {**params["lm"]["h_0"], "mlp": {
                **params["lm"]["h_0"]["mlp"], "c_fc": {**params["lm"]["h_0"]["mlp"]["c_fc"], "kernel": bad}}}}}
            states = states.replace(train=states.train.replace(params=params))
        return chunk(states, data, shared, length=length)

    return poisoned

sweep.make_train_chunk = poisoned_maker
runner.run_experiment(load_config(sys.argv[1]), out_dir=sys.argv[2], report=True)
"""


@pytest.mark.slow
def test_nan_in_one_run_fails_only_that_run_and_the_report_lists_it(clean_run, tiny_config, env, tmp_path):
    result = subprocess.run([sys.executable, "-c", NAN_SCRIPT, str(tiny_config), str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "failed runs 1" in result.stdout
    run = tmp_path / "tiny"
    faulted = ("0.0", "1")  # run index 1: rate 0.0, seed 1

    results, clean_results = read_rows(run / "results.csv"), read_rows(clean_run / "results.csv")
    for row, clean in zip(results, clean_results, strict=True):
        if (row["s_only_rate"], row["seed"]) == faulted:
            assert (row["status"], row["failed_iteration"]) == ("failed", "2")
        else:
            assert row == clean  # the other runs of the vmapped batch are untouched, bit for bit

    curves, clean_curves = read_rows(run / "curves.csv"), read_rows(clean_run / "curves.csv")
    for row, clean in zip(curves, clean_curves, strict=True):
        if (row["s_only_rate"], row["seed"]) != faulted or int(row["iteration"]) < 2:
            assert row == clean
        else:
            assert row["loss/total"] == "nan"

    report = (run / "report.md").read_text()
    assert "1 run(s) failed numerically" in report
    assert "| 0 | 1 | 2 |" in report.replace("  ", " ")  # s-only rate, seed, failed at iteration


@pytest.mark.slow
def test_compiled_chunk_isolates_a_nan_run():
    """One run's parameters poisoned: exactly that run fails, at the right iteration; the others are bitwise clean."""
    from rlbias_jax.config import config_from_dict
    from rlbias_jax.experiments.base import run_specs
    from rlbias_jax.experiments.toy import ToyExperiment
    from rlbias_jax.rl import sweep

    import tomllib

    experiment = ToyExperiment(config_from_dict(tomllib.loads(TINY)))
    specs = run_specs(experiment.config, experiment.task_names)
    states, data, shared = experiment.initial_states(specs), experiment.training_data(specs), experiment.shared(specs)
    reference = shared.value
    chunk = sweep.make_train_chunk(experiment.build_policy, experiment.config.ppo, shared.axis)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 — the chunk donates its input

    states, _ = chunk(states, data, reference, length=1)
    clean, clean_metrics = chunk(copy(states), data, reference, length=1)
    again, _ = chunk(copy(states), data, reference, length=1)
    poisoned_params = jax.tree.map(lambda x: x.at[2].set(jnp.inf) if x.ndim == 3 else x, states.train.params)
    faulty_input = states.replace(train=states.train.replace(params=poisoned_params))
    faulty, faulty_metrics = chunk(copy(faulty_input), data, reference, length=1)

    assert np.asarray(faulty.failed).tolist() == [False, False, True, False]
    assert np.asarray(faulty.failed_iteration).tolist() == [-1, -1, 1, -1]
    assert not np.asarray(clean.failed).any()
    healthy = np.array([True, True, False, True])
    for leaf_clean, leaf_again, leaf_faulty, leaf_input in zip(jax.tree.leaves(clean.train), jax.tree.leaves(again.train),
                                                               jax.tree.leaves(faulty.train), jax.tree.leaves(faulty_input.train)):
        assert np.array_equal(np.asarray(leaf_clean), np.asarray(leaf_again))  # deterministic
        assert np.array_equal(np.asarray(leaf_faulty)[healthy], np.asarray(leaf_clean)[healthy])
        # the faulted run is frozen at its last state (here: the poisoned input)
        np.testing.assert_array_equal(np.asarray(leaf_faulty)[2], np.asarray(leaf_input)[2])
    for name, values in clean_metrics.items():
        assert np.array_equal(np.asarray(faulty_metrics[name])[healthy], np.asarray(values)[healthy]), name


# ---------------------------------------------------------------------------
# checkpoints


def _state(seed: int, runs: int = 4):
    key = jax.random.key(seed)
    return {
        "params": {"w": jax.random.normal(key, (runs, 64, 32)), "b": jnp.arange(runs * 3, dtype=jnp.float32).reshape(runs, 3)},
        "key": jax.random.split(key, runs),
        "failed": jnp.array([False, True, False, False][:runs]),
        "iteration": jnp.full((runs,), seed, jnp.int32),
    }


def _same(a, b) -> bool:
    unwrap = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
    return all(np.array_equal(np.asarray(unwrap(x)), np.asarray(unwrap(y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(step: Path) -> None:
    for data_file in (step / "state" / "d").iterdir():
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])


def _flip_a_byte(step: Path) -> None:
    data_file = _largest_file(step / "state" / "d")
    content = bytearray(data_file.read_bytes())
    content[len(content) // 2] ^= 0x40
    data_file.write_bytes(bytes(content))


def _garble_record(step: Path) -> None:
    for record_file in (step / "record").iterdir():
        if record_file.is_file() and record_file.name != "commit_success.txt":
            record_file.write_text("{")


CORRUPTIONS = {
    "truncated data": _truncate,
    "flipped byte": _flip_a_byte,
    "missing state": lambda step: shutil.rmtree(step / "state"),
    "garbled record": _garble_record,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, corruption):
    checkpoints = SweepCheckpoints(tmp_path / "checkpoints", keep=3)
    checkpoints.save(2, _state(2))
    checkpoints.save(4, _state(4))
    checkpoints.close()
    CORRUPTIONS[corruption](tmp_path / "checkpoints" / "4")

    messages = []
    reopened = SweepCheckpoints(tmp_path / "checkpoints", keep=3)
    step, state = reopened.restore_latest(_state(0), on_skip=messages.append)
    assert step == 2 and _same(state, _state(2))
    assert "checkpoint at iteration 4 is unusable" in messages[0] and "\n" not in messages[0]
    # the corrupt one is moved aside, so the sweep can write step 4 again
    assert reopened.steps() == [2] and any((tmp_path / "checkpoints.corrupt").iterdir())
    reopened.save(4, _state(4))
    assert reopened.restore_latest(_state(0), on_skip=messages.append)[0] == 4


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    checkpoints = SweepCheckpoints(tmp_path / "checkpoints", keep=3)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        checkpoints.restore_latest(_state(0), on_skip=lambda message: None)
    checkpoints.save(2, _state(2))
    _truncate(tmp_path / "checkpoints" / "2")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*iterations \[2\] are all unreadable or corrupt"):
        checkpoints.restore_latest(_state(0), on_skip=lambda message: None)


def test_restore_repads_runs_for_another_device_count(tmp_path):
    """A checkpoint of 4 real runs padded to 8 restores into a state padded to 6 (other device count)."""
    padded8 = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], 4, axis=0)]), _state(3))
    checkpoints = SweepCheckpoints(tmp_path / "checkpoints", keep=2)
    checkpoints.save(2, padded8, num_runs=4)
    like6 = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], 2, axis=0)]), _state(0))
    step, restored = checkpoints.restore_latest(like6)
    assert step == 2
    assert _same(restored, jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], 2, axis=0)]), _state(3)))


def test_restore_without_a_run_count_keeps_the_padding_that_fits(tmp_path):
    """A caller that saves without num_runs (padding counted as runs) can still resume on fewer devices."""
    padded8 = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], 4, axis=0)]), _state(3))
    checkpoints = SweepCheckpoints(tmp_path / "checkpoints", keep=2)
    checkpoints.save(2, padded8)
    like6 = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], 2, axis=0)]), _state(0))
    assert _same(checkpoints.restore_latest(like6)[1], jax.tree.map(lambda x: x[:6], padded8))


def test_an_interrupted_save_is_ignored(tmp_path):
    checkpoints = SweepCheckpoints(tmp_path / "checkpoints", keep=2)
    checkpoints.save(2, _state(2))
    checkpoints.close()
    # what a kill during orbax's write of step 4 leaves behind: a temporary folder, never renamed
    (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1764514800").mkdir()
    reopened = SweepCheckpoints(tmp_path / "checkpoints", keep=2)
    assert reopened.steps() == [2]
    assert reopened.restore_latest(_state(0))[0] == 2


def test_time_based_checkpoints(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("rlbias_jax.checkpoints.time.monotonic", lambda: clock[0])
    checkpoints = SweepCheckpoints(tmp_path / "checkpoints", keep=5, every_s=60)
    assert not checkpoints.maybe_save(2, _state(2), final=False)  # 0 s since the start
    clock[0] += 61
    assert checkpoints.maybe_save(4, _state(4), final=False)
    clock[0] += 10
    assert not checkpoints.maybe_save(6, _state(6), final=False)
    assert checkpoints.maybe_save(8, _state(8), final=True)  # the last chunk always
    assert checkpoints.steps() == [4, 8]
    every_chunk = SweepCheckpoints(tmp_path / "other", keep=5, every_s=0)
    assert every_chunk.maybe_save(2, _state(2), final=False)


# ---------------------------------------------------------------------------
# run directories and outputs


def test_resume_requires_the_same_experiment():
    old = {"run": {"name": "x", "checkpoint_every_s": 0.0, "num_processes": 0}, "ppo": {"learning_rate": 1e-3}, "task": {"task_ids": [1, 3]}}
    same_but_operational = {"run": {"name": "x", "checkpoint_every_s": 600.0, "num_processes": 2}, "ppo": {"learning_rate": 1e-3},
                            "task": {"task_ids": (1, 3)}}
    assert config_differences(resume_key(old), resume_key(same_but_operational)) == []
    changed = {**same_but_operational, "ppo": {"learning_rate": 1e-4}}
    assert config_differences(resume_key(old), resume_key(changed)) == ["ppo.learning_rate"]


def test_run_directory_rules(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "results.csv").write_text("x\n")
    with pytest.raises(RunDirError, match="already exists; use --resume"):
        check_run_dir(tmp_path, "taken", resume=False, overwrite=False)
    assert check_run_dir(tmp_path, "taken", resume=False, overwrite=True) == tmp_path / "taken"
    with pytest.raises(RunDirError, match="has no manifest.json"):
        check_run_dir(tmp_path, "taken", resume=True, overwrite=False)
    assert check_run_dir(tmp_path, "fresh", resume=False, overwrite=False) == tmp_path / "fresh"

    lock = RunLock(tmp_path / "taken").acquire()
    # flock locks belong to an open file description: a second open in this process conflicts like another process
    with pytest.raises(RunDirError, match="another rlbias process is working in"):
        RunLock(tmp_path / "taken").acquire()
    lock.release()
    RunLock(tmp_path / "taken").acquire().release()


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    atomic_write_text(path, "old\n")
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("rlbias_jax.runs.os.replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary file left behind


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
