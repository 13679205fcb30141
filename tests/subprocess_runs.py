"""Helpers for tests that run `rlbias` in subprocesses on a tiny sweep and compare run directories.

Every subprocess shares XLA's persistent compilation cache (pytest's cache folder), so
only the first process of a session that needs a given program compiles it.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# 4 runs (1 task × 2 rates × 2 seeds), 6 iterations in chunks of 2: seconds per process once compiled.
TINY = """
[run]
name = "tiny"
chunk_iterations = 2
probe = false
report = false
[task]
task_ids = [1]
train_size = 64
test_size_both = 16
test_size_neither = 16
test_size_s_only = 16
test_size_t_only = 16
[model]
n_layer = 1
n_head = 2
d_model = 16
max_len = 16
[ppo]
iterations = 6
episodes_per_iteration = 16
minibatch_size = 8
epochs = 1
learning_rate = 1e-3
[sweep]
s_only_rates = [0.0, 0.5]
seeds = 2
[eval]
greedy = false
"""


# The same sweep on the opt-in path whose results do not depend on the device or process count.
TINY_BITWISE = TINY.replace("report = false\n", "report = false\nbitwise_across_devices = true\n", 1)
assert TINY_BITWISE != TINY


def subprocess_env(request, tmp_path_factory, devices: int = 1) -> dict[str, str]:
    """CPU only, `devices` forced host devices, and the shared compilation cache."""
    cache_provider = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = cache_provider.mkdir("rlbias_xla_cache") if cache_provider else tmp_path_factory.mktemp("xla_cache")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("JAX_", "XLA_"))}
    env.update({
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    })
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"  # read when jax starts
    return env


def rlbias(*args, env, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "rlbias_jax.cli", *map(str, args)], env=env, capture_output=True,
                            text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"rlbias {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def start_and_kill_at_checkpoint(args, env, checkpoint: Path, pause_s: float = 4.0) -> None:
    """Run `rlbias` pausing after each chunk; SIGKILL it as soon as `checkpoint` is complete."""
    process = subprocess.Popen([sys.executable, "-m", "rlbias_jax.cli", *map(str, args)],
                               env={**env, "RLBIAS_DEBUG_PAUSE_AFTER_CHUNK_S": str(pause_s)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    try:
        # the file list is written after orbax commits the step
        while not (checkpoint / "rlbias_files.json").is_file():
            if process.poll() is not None:
                raise AssertionError(f"the run ended before {checkpoint} appeared:\n{process.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{checkpoint} did not appear in time")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def assert_same_outputs(run: Path, reference: Path) -> None:
    """results.csv and curves.csv byte for byte (with a readable diff on failure)."""
    for name in ("results.csv", "curves.csv"):
        if (run / name).read_bytes() != (reference / name).read_bytes():
            rows, expected = read_rows(run / name), read_rows(reference / name)
            first = next((i for i, (a, b) in enumerate(zip(rows, expected)) if a != b), min(len(rows), len(expected)))
            raise AssertionError(f"{name} differs from {reference / name} (first at row {first}: "
                                 f"{rows[first] if first < len(rows) else None} vs {expected[first] if first < len(expected) else None})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
