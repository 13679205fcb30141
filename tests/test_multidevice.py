"""Scale-out: the run axis sharded over devices and processes gives the results of one device, bit for bit.

Device counts are forced with XLA_FLAGS=--xla_force_host_platform_device_count=N,
which must be set before jax starts, so every multi-device run is a subprocess
(tests/subprocess_runs.py). Multi-host runs are two processes on localhost joined
by `jax.distributed.initialize` (JAX's CPU collectives: gloo).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from rlbias_jax.config import ConfigError, RunConfig
from rlbias_jax.distributed import resolve_process_group
from rlbias_jax.rl.sweep import compiler_options, padded_run_count
from subprocess_runs import TINY_BITWISE, assert_same_outputs, free_port, rlbias, subprocess_env


def test_bitwise_padding_gives_every_device_at_least_two_runs():
    mesh = lambda size: types.SimpleNamespace(size=size)  # noqa: E731 — padded_run_count reads only .size
    bitwise = lambda runs, size: padded_run_count(runs, mesh(size), bitwise_across_devices=True)  # noqa: E731
    assert bitwise(4, 1) == 4
    assert bitwise(4, 4) == 8  # a device with one run computes reductions in another order
    assert bitwise(4, 3) == 6
    assert bitwise(40, 8) == 40
    assert bitwise(41, 8) == 48
    assert bitwise(1, 1) == 2


def test_default_padding_only_fills_the_last_device():
    mesh = lambda size: types.SimpleNamespace(size=size)  # noqa: E731
    assert padded_run_count(1, mesh(1)) == 1  # a single run is not doubled by a padding run
    assert padded_run_count(4, mesh(4)) == 4
    assert padded_run_count(41, mesh(8)) == 48


def test_only_the_opt_in_switches_off_batch_shape_dependent_fusions():
    assert compiler_options(False) is None  # the default: XLA's fast path
    assert compiler_options(True) == {"xla_cpu_experimental_ynn_fusion_type": ""}


def test_process_group_from_config_or_environment():
    single = resolve_process_group(RunConfig(), environ={})
    assert (single.num_processes, single.process_id, single.multi_process) == (1, 0, False)
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    group = resolve_process_group(RunConfig(), environ=env)
    assert (group.coordinator_address, group.num_processes, group.process_id) == ("10.0.0.1:1234", 4, 3)
    # fields set in the config win over the environment
    group = resolve_process_group(RunConfig(coordinator_address="head:99", num_processes=2, process_id=1), environ=env)
    assert (group.coordinator_address, group.num_processes, group.process_id) == ("head:99", 2, 1)


@pytest.mark.parametrize("run, environ, field", [
    (RunConfig(num_processes=2, process_id=0), {}, "run.num_processes"),  # no coordinator anywhere
    (RunConfig(), {"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_PROCESS_ID"),
    (RunConfig(), {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
    (RunConfig(), {"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "nohost", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS"),
    (RunConfig(num_processes=2), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "5"}, "JAX_PROCESS_ID"),
])
def test_process_group_errors_name_the_field(run, environ, field):
    with pytest.raises(ConfigError) as error:
        resolve_process_group(run, environ=environ)
    assert str(error.value).startswith(field), str(error.value)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TINY_BITWISE)  # device-count invariance is the opt-in path
    return path


@pytest.fixture(scope="module")
def one_device_run(request, tmp_path_factory, tiny_config) -> Path:
    out = tmp_path_factory.mktemp("one_device")
    rlbias("train", tiny_config, "--out-dir", out, env=subprocess_env(request, tmp_path_factory))
    return out / "tiny"


@pytest.mark.slow
def test_four_devices_give_the_results_of_one(request, tmp_path_factory, tmp_path, tiny_config, one_device_run):
    four = subprocess_env(request, tmp_path_factory, devices=4)
    result = rlbias("train", tiny_config, "--out-dir", tmp_path, env=four)
    assert "as one program on 4 device(s)" in result.stdout
    assert len(json.loads((tmp_path / "tiny" / "manifest.json").read_text())["devices"]) == 4
    assert_same_outputs(tmp_path / "tiny", one_device_run)

    # a checkpoint written on 4 devices (8 padded runs) resumes on 3 devices (6 padded runs)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "tiny", resumed / "tiny")
    shutil.rmtree(resumed / "tiny" / "checkpoints" / "6")
    (resumed / "tiny" / "results.csv").unlink()
    three = subprocess_env(request, tmp_path_factory, devices=3)
    result = rlbias("train", tiny_config, "--out-dir", resumed, "--resume", env=three)
    assert "on 3 device(s)" in result.stdout and "resumed from the checkpoint at iteration 4" in result.stdout
    assert_same_outputs(resumed / "tiny", one_device_run)


@pytest.mark.slow
def test_two_processes_give_the_results_of_one(request, tmp_path_factory, tmp_path, tiny_config, one_device_run):
    """Multi-host on localhost: 2 processes × 2 CPU devices, joined through jax.distributed."""
    env = subprocess_env(request, tmp_path_factory, devices=2)
    env.update({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2"})
    command = [sys.executable, "-m", "rlbias_jax.cli", "train", str(tiny_config), "--out-dir", str(tmp_path)]
    processes = [subprocess.Popen(command, env={**env, "JAX_PROCESS_ID": str(index)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for index in (1, 0)]
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    own_lines = lambda text: [line for line in text.splitlines() if line.strip() and not line.startswith("[Gloo]")]  # noqa: E731
    stdout_worker, stdout_main = own_lines(outputs[0][0]), own_lines(outputs[1][0])
    assert any("as one program on 4 device(s)" in line for line in stdout_main)
    assert stdout_worker == []  # only process 0 reports (and writes)
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert manifest["process_count"] == 2 and len(manifest["devices"]) == 4
    assert_same_outputs(tmp_path / "tiny", one_device_run)
