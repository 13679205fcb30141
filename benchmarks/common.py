"""Shared helpers for the benchmarks: machine description, load, timing, FLOP counts,
the benchmark PPO settings and JSON output."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(os.environ.get("BENCH_RESULTS", Path(__file__).resolve().parent / "results"))
REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted=("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")) -> list[str]:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [flag for flag in wanted if flag in flags]


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other users share this machine)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict:
    import jax

    from rlbias_jax.runs import package_versions

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
        "packages": {k: v for k, v in package_versions().items() if v},
        "git_sha": git_sha(),
        "load_average_at_start": load_average(),
    }


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time over `repeats` calls (fn must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def cpu_seconds() -> float:
    """CPU time of this process, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_call(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one blocking call. CPU seconds say how much work the
    call took even when other users' processes take the cores away part of the time."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def interleaved_times(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall times of each fn, called round-robin so that load changes hit all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def write_json(name: str, data: dict) -> Path:
    from rlbias_jax.runs import atomic_write_json

    path = RESULTS / f"{name}.json"
    atomic_write_json(path, data)
    return path


# ---------------------------------------------------------------- benchmark settings


@dataclasses.dataclass(frozen=True)
class Setting:
    """One PPO configuration, the same on every side of a comparison."""

    name: str
    n_layer: int
    d_model: int
    n_head: int = 4
    episodes: int = 256
    minibatch: int = 64
    epochs: int = 5
    learning_rate: float = 1e-4
    dtype: str = "float32"


# The paper's toy setting at the batch (256 episodes, minibatches of 64) and a smaller model.
PAPER = Setting("paper_4x256", n_layer=4, d_model=256)
SMALL = Setting("small_2x128", n_layer=2, d_model=128)


def toy_config(setting: Setting, runs: int = 1, base: str = "configs/toy_paper.toml"):
    """The toy Config of `setting`: task 1, rate 0, `runs` seeds (KL 0 and the rest as in `base`)."""
    from rlbias_jax.config import load_config, replace

    config = load_config(REPO / base)
    return replace(
        config,
        task={"task_ids": (1,), "train_size": 10_000},
        sweep={"s_only_rates": (0.0,), "seeds": runs},
        model={"n_layer": setting.n_layer, "d_model": setting.d_model, "n_head": setting.n_head, "dtype": setting.dtype},
        ppo={"episodes_per_iteration": setting.episodes, "minibatch_size": setting.minibatch, "epochs": setting.epochs,
             "learning_rate": setting.learning_rate},
    )


# ---------------------------------------------------------------- FLOP counts


def flops_per_token(num_params: int, n_layer: int, d_model: int, context: int, backward: bool) -> float:
    """Matmul FLOPs for one token (nanoGPT's estimate): 2N forward (6N with backward) plus
    attention scores and mixing over `context` keys, 4·L·d·context forward (×3 with backward)."""
    forward = 2 * num_params + 4 * n_layer * d_model * context
    return 3 * forward if backward else forward


def ppo_flops_per_episode(num_params: int, n_layer: int, d_model: int, prompt_len: int, response_len: int, epochs: int) -> dict:
    """FLOPs per episode of each PPO phase, as our code executes them.

    rollout: the prompt prefill plus one cached step per response token, attending over
    the whole cache (P + N slots); teacher: one forward pass over the P + N tokens;
    update: `epochs` forward + backward passes over the P + N tokens.
    """
    length = prompt_len + response_len
    rollout = length * flops_per_token(num_params, n_layer, d_model, length, backward=False)
    teacher = length * flops_per_token(num_params, n_layer, d_model, length, backward=False)
    update = epochs * length * flops_per_token(num_params, n_layer, d_model, length, backward=True)
    return {"rollout": rollout, "teacher_forced": teacher, "update": update, "total": rollout + teacher + update}


def trl_flops_per_episode(num_params: int, n_layer: int, d_model: int, prompt_len: int, response_len: int, epochs: int) -> dict:
    """The same for TRL's PPOTrainer: a separate value network of the policy's size is trained
    alongside the policy, and rollout runs generation (prefill + N − 1 cached steps), a
    reference forward pass (even with KL 0) and a value forward pass."""
    length = prompt_len + response_len
    generate = (prompt_len + response_len - 1) * flops_per_token(num_params, n_layer, d_model, length, backward=False)
    forward = length * flops_per_token(num_params, n_layer, d_model, length, backward=False)
    update = 2 * epochs * length * flops_per_token(num_params, n_layer, d_model, length, backward=True)
    rollout = generate + 2 * forward
    return {"rollout": rollout, "update": update, "total": rollout + update}
