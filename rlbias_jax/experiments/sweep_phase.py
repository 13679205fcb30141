"""The RL phase of any experiment: place the runs on the devices, evaluate the untrained
policies (the baseline), train chunk after chunk with checkpoints and curves, evaluate
the trained policies.

The experiment contributes its runs' initial states, data, shared inputs, policy builder
and test prompts (`rlbias_jax.experiments.base.Experiment`). Everything else (padding and
sharding the run axis, resuming, time-based checkpoints, process-0 writes, host-copy
evaluation, the manifest's throughput record) lives here once.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax import distributed
from rlbias_jax.checkpoints import SweepCheckpoints
from rlbias_jax.experiments.base import PARTITION_LABELS, PARTITIONS, Experiment, KeyTag, Progress, RunSpec, Shared, stream
from rlbias_jax.rl import sweep
from rlbias_jax.rl.train import RunData, RunState
from rlbias_jax.runs import atomic_write_csv, atomic_write_json, read_csv

BASELINE_FILE = "baseline.csv"


def _write_csv(path: Path, rows: list[dict]) -> None:
    if distributed.is_writer():
        atomic_write_csv(path, rows)


# EVALUATION


def decodings(greedy: bool) -> list[str]:
    """The evaluation's decodings: sampled always, greedy when configured (eval.greedy)."""
    return ["sample", "greedy"] if greedy else ["sample"]


def evaluation_rows(experiment: Experiment, evaluate: Callable, specs: list[RunSpec], states: RunState, shared: Shared) -> list[dict]:
    """The rows of results.csv (docs/run_directory.md) for every run × partition × decoding.

    evaluate(params[R], shared, prompts[R, n, P], labels[R, n], keys[R], greedy=) -> (mean raw
    reward[R], its standard error[R]) (`rl.sweep.make_evaluate`); each row's score is `experiment.score`
    of the mean, score_sem the standard error on the score's scale (the score is affine in the reward). Padding
    runs (beyond specs) are dropped; the evaluation keys depend on (task, rate, seed, partition).
    """
    run_count = len(specs)
    base = jax.random.key(experiment.config.run.seed)
    params = jax.tree.map(lambda x: x[:run_count], states.train.params)
    shared_value = jax.tree.map(lambda x: x[:run_count], shared.value) if shared.per_run else shared.value
    failed = np.asarray(states.failed)[:run_count]
    failed_iteration = np.asarray(states.failed_iteration)[:run_count]
    rows = []
    for partition_index, partition in enumerate(PARTITIONS):
        prompts = jnp.stack([jnp.asarray(experiment.test_prompts(spec.task_id, partition)) for spec in specs])
        labels = jnp.full(prompts.shape[:2], PARTITION_LABELS[partition], jnp.int32)
        keys = jnp.stack([stream(base, KeyTag.EVAL, spec.task_id, spec.rate_index, spec.seed, partition_index) for spec in specs])
        for decoding in decodings(experiment.config.eval.greedy):
            rewards, sems = map(np.asarray, evaluate(params, shared_value, prompts, labels, keys, greedy=decoding == "greedy"))
            for index, spec in enumerate(specs):
                rows.append({
                    "task_id": spec.task_id,
                    "task_name": spec.task_name,
                    "s_only_rate": spec.s_only_rate,
                    "seed": spec.seed,
                    "decoding": decoding,
                    "partition": partition,
                    "score": float(experiment.score(rewards[index])),
                    "score_sem": abs(float(experiment.score(rewards[index] + sems[index])) - float(experiment.score(rewards[index]))),
                    "raw_reward": float(rewards[index]),
                    "n_examples": int(prompts.shape[1]),
                    "status": "failed" if failed[index] else "ok",
                    "failed_iteration": int(failed_iteration[index]),
                })
    return rows


# THE HOST LOOP OVER COMPILED CHUNKS


@dataclasses.dataclass
class ChunkReport:
    iteration: int
    total_iterations: int
    seconds: float
    episodes: int
    reward_mean: float
    failed_runs: int

    def line(self) -> str:
        rate = self.episodes / max(self.seconds, 1e-9)
        return (
            f"iteration {self.iteration:>4}/{self.total_iterations}  reward {self.reward_mean:.3f}  "
            f"{rate:,.0f} episodes/s  failed runs {self.failed_runs}"
        )


def metrics_to_rows(metrics: dict, specs: list[RunSpec], first_iteration: int) -> list[dict]:
    """Chunk metrics {name: [R_padded, chunk]} -> one row per run × iteration (padding dropped)."""
    host = distributed.to_host(dict(metrics))
    chunk = next(iter(host.values())).shape[1]
    rows = []
    for run_index, spec in enumerate(specs):
        for step in range(chunk):
            row = {
                "task_id": spec.task_id,
                "task_name": spec.task_name,
                "s_only_rate": spec.s_only_rate,
                "seed": spec.seed,
                "iteration": first_iteration + step,
            }
            row.update({name: float(values[run_index, step]) for name, values in sorted(host.items())})
            rows.append(row)
    return rows


def run_chunks(
    train_chunk: Callable,
    states: RunState,
    data: RunData,
    shared,
    *,
    specs: list[RunSpec],
    start_iteration: int,
    total_iterations: int,
    chunk_iterations: int,
    episodes_per_iteration: int,
    on_chunk: Callable[[RunState, list[dict], ChunkReport], None],
) -> RunState:
    """Host loop over compiled chunks; `on_chunk` gets the state, the curve rows and a progress report."""
    iteration = start_iteration
    while iteration < total_iterations:
        length = min(chunk_iterations, total_iterations - iteration)
        started = time.perf_counter()
        states, metrics = train_chunk(states, data, shared, length=length)
        jax.block_until_ready(states)
        seconds = time.perf_counter() - started
        # curves hold only deterministic values (timings go to ChunkReport), so that a
        # resumed or re-run sweep writes byte-identical curves
        rows = metrics_to_rows(metrics, specs, iteration)
        iteration += length
        rewards = np.asarray([row["env/reward_mean"] for row in rows if row["iteration"] == iteration - 1])
        failed = int(distributed.to_host(states.failed)[: len(specs)].sum())
        report = ChunkReport(
            iteration=iteration,
            total_iterations=total_iterations,
            seconds=seconds,
            episodes=episodes_per_iteration * length * len(specs),
            reward_mean=float(rewards.mean()),
            failed_runs=failed,
        )
        on_chunk(states, rows, report)
    return states


# THE PHASE


def run_baseline(experiment: Experiment, evaluate: Callable, specs: list[RunSpec], states: RunState, shared: Shared,
                 run_dir: Path, manifest: dict, progress: Progress, resume: bool) -> None:
    """Evaluate the untrained policies once into baseline.csv (kept as it is on a resume).

    Only a resume may skip it: on a fresh run every process evaluates, whatever process 0
    has already written, so that all of them take the same path."""
    if resume and (run_dir / BASELINE_FILE).is_file():
        return
    started = time.perf_counter()
    progress("evaluating the untrained policies on the held-out test partitions (baseline)")
    _write_csv(run_dir / BASELINE_FILE, evaluation_rows(experiment, evaluate, specs, distributed.to_host(states), shared))
    seconds = time.perf_counter() - started
    manifest["phases"]["baseline"] = {"wall_time_s": round(seconds, 2)}
    progress(f"  baseline evaluated in {seconds:.1f} s")


def run_sweep_phase(experiment: Experiment, specs: list[RunSpec], run_dir: Path, manifest: dict, progress: Progress,
                    resume: bool) -> list[dict]:
    """Train every run and evaluate it (after the baseline, if configured); returns the rows of results.csv."""
    config = experiment.config
    initial_states, data, shared = experiment.initial_states(specs), experiment.training_data(specs), experiment.shared(specs)
    evaluate = sweep.make_evaluate(experiment.build_policy, shared.axis,
                                   bitwise_across_devices=config.run.bitwise_across_devices)
    if config.eval.baseline:
        run_baseline(experiment, evaluate, specs, initial_states, shared, run_dir, manifest, progress, resume)
    started = time.perf_counter()
    mesh = sweep.run_mesh()
    padded = sweep.padded_run_count(len(specs), mesh, config.run.bitwise_across_devices)
    place = lambda tree: sweep.shard_runs(sweep.pad_runs(tree, len(specs), padded), mesh)  # noqa: E731
    states, data = place(initial_states), place(data)
    shared_placed = place(shared.value) if shared.per_run and shared.value is not None else shared.value
    train_chunk = sweep.make_train_chunk(experiment.build_policy, config.ppo, shared.axis,
                                         bitwise_across_devices=config.run.bitwise_across_devices, algorithm=config.algorithm)
    algorithm = config.algorithm
    algorithm_note = f"; {algorithm.name}, G = {algorithm.samples_per_prompt()} responses per prompt" if algorithm.critic_free else ""
    progress(experiment.sweep_description(specs).format(devices=mesh.size) + algorithm_note)
    checkpoints = SweepCheckpoints(run_dir / "checkpoints", config.run.checkpoint_keep, config.run.checkpoint_every_s)
    curves: list[dict] = []
    start_iteration = 0
    if resume and checkpoints.steps():
        start_iteration, states = checkpoints.restore_latest(states, on_skip=progress)
        if (run_dir / "curves.csv").is_file():
            curves = [row for row in read_csv(run_dir / "curves.csv") if int(row["iteration"]) < start_iteration]
        progress(f"resumed from the checkpoint at iteration {start_iteration}")
    elif resume:
        progress("no checkpoint yet: the sweep starts again from iteration 0")
    pause_s = float(os.environ.get("RLBIAS_DEBUG_PAUSE_AFTER_CHUNK_S", "0") or 0)  # tests: time to kill mid-sweep

    def on_chunk(new_states, rows, report: ChunkReport) -> None:
        # curves first: a kill before the checkpoint leaves rows that a resume truncates
        curves.extend(rows)
        _write_csv(run_dir / "curves.csv", curves)
        saved = checkpoints.maybe_save(report.iteration, new_states, final=report.iteration >= config.ppo.iterations,
                                       num_runs=len(specs))
        progress(report.line() + experiment.chunk_note(rows, report.iteration) + ("" if saved else "  (checkpoint not due)"))
        if pause_s > 0:
            time.sleep(pause_s)

    states = run_chunks(
        train_chunk, states, data, shared_placed,
        specs=specs,
        start_iteration=start_iteration,
        total_iterations=config.ppo.iterations,
        chunk_iterations=config.run.chunk_iterations,
        episodes_per_iteration=config.ppo.episodes_per_iteration,
        on_chunk=on_chunk,
    )
    checkpoints.close()
    train_seconds = time.perf_counter() - started
    progress("evaluating every run on the held-out test partitions")
    # on one device, from host copies: the same program for any device count or process count
    results = evaluation_rows(experiment, evaluate, specs, distributed.to_host(states), shared)
    _write_csv(run_dir / "results.csv", results)
    episodes = (config.ppo.iterations - start_iteration) * config.ppo.episodes_per_iteration * len(specs)
    manifest["phases"]["rl"] = {
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_wall_time_s": round(train_seconds, 2),
        "episodes": episodes,
        "episodes_per_s": round(episodes / max(train_seconds, 1e-9), 2),
        "runs": len(specs),
    }
    manifest["tasks_completed"] = sorted({spec.task_id for spec in specs})
    if distributed.is_writer():
        atomic_write_json(run_dir / "manifest.json", manifest)
    return results
