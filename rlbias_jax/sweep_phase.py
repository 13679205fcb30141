"""The RL phase of an experiment, shared by the toy and the natural-language pipelines:
place the runs on the devices, evaluate the untrained policies (the baseline), train chunk
after chunk with checkpoints and curves, evaluate the trained policies.

An experiment contributes a `SweepPlan`: its runs, their initial states and data, the
compiled chunk program and its evaluation function. Everything else (padding and sharding
the run axis, resuming, time-based checkpoints, process-0 writes, host-copy evaluation,
the manifest's throughput record) lives here once.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

from rlbias_jax import distributed
from rlbias_jax.checkpoints import SweepCheckpoints
from rlbias_jax.config import Config
from rlbias_jax.rl import sweep
from rlbias_jax.rl.train import RunData, RunState
from rlbias_jax.runs import atomic_write_csv, atomic_write_json, read_csv

Progress = Callable[[str], None]

BASELINE_FILE = "baseline.csv"


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """What one experiment brings to the RL phase.

    states, data: stacked over the runs [R] (unpadded, host or default device).
    shared: the chunk program's third argument: a tree with a run axis when
        `shared_per_run` (padded and sharded like the states), else broadcast to every run.
    train_chunk: (states, data, shared, length=) -> (states, metrics[R, length]).
    evaluate: states [≥ R] (host copies) -> the rows of results.csv (docs/run_directory.md).
    description: the progress line announcing the sweep.
    chunk_note: optional extra text for a chunk's progress line, from its curve rows.
    """

    specs: list[sweep.RunSpec]
    states: RunState
    data: RunData
    shared: object
    shared_per_run: bool
    train_chunk: Callable
    evaluate: Callable[[RunState], list[dict]]
    description: str
    chunk_note: Callable[[list[dict], int], str] | None = None


def _write_csv(path: Path, rows: list[dict]) -> None:
    if distributed.is_writer():
        atomic_write_csv(path, rows)


def run_baseline(plan: SweepPlan, run_dir: Path, manifest: dict, progress: Progress, resume: bool) -> None:
    """Evaluate the untrained policies once into baseline.csv (kept as it is on a resume).

    Only a resume may skip it: on a fresh run every process evaluates, whatever process 0
    has already written, so that all of them take the same path."""
    if resume and (run_dir / BASELINE_FILE).is_file():
        return
    started = time.perf_counter()
    progress("evaluating the untrained policies on the held-out test partitions (baseline)")
    _write_csv(run_dir / BASELINE_FILE, plan.evaluate(distributed.to_host(plan.states)))
    seconds = time.perf_counter() - started
    manifest["phases"]["baseline"] = {"wall_time_s": round(seconds, 2)}
    progress(f"  baseline evaluated in {seconds:.1f} s")


def run_sweep_phase(config: Config, run_dir: Path, manifest: dict, progress: Progress, resume: bool,
                    plan: SweepPlan, *, baseline: bool = True) -> list[dict]:
    """Train every run of the plan and evaluate it; returns the rows of results.csv."""
    specs = plan.specs
    if baseline:
        run_baseline(plan, run_dir, manifest, progress, resume)
    started = time.perf_counter()
    mesh = sweep.run_mesh()
    padded = sweep.padded_run_count(len(specs), mesh)
    place = lambda tree: sweep.shard_runs(sweep.pad_runs(tree, len(specs), padded), mesh)  # noqa: E731
    states, data = place(plan.states), place(plan.data)
    shared = place(plan.shared) if plan.shared_per_run and plan.shared is not None else plan.shared
    progress(plan.description.format(devices=mesh.size))
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

    def on_chunk(new_states, rows, report: sweep.ChunkReport) -> None:
        # curves first: a kill before the checkpoint leaves rows that a resume truncates
        curves.extend(rows)
        _write_csv(run_dir / "curves.csv", curves)
        saved = checkpoints.maybe_save(report.iteration, new_states, final=report.iteration >= config.ppo.iterations,
                                       num_runs=len(specs))
        note = plan.chunk_note(rows, report.iteration) if plan.chunk_note else ""
        progress(report.line() + note + ("" if saved else "  (checkpoint not due)"))
        if pause_s > 0:
            time.sleep(pause_s)

    states = sweep.run_chunks(
        plan.train_chunk, states, data, shared,
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
    results = plan.evaluate(distributed.to_host(states))
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


def mean_kl_note(rows: list[dict], iteration: int) -> str:
    """'  KL 0.123  beta 0.200': the last iteration's mean KL and coefficient over runs."""
    last = [row for row in rows if row["iteration"] == iteration - 1]
    if not last:
        return ""
    kl = sum(row["objective/kl"] for row in last) / len(last)
    beta = sum(row["objective/kl_coef"] for row in last) / len(last)
    return f"  KL {kl:.3f}  beta {beta:.3f}"
