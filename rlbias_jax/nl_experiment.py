"""The natural-language experiment from config to run directory (SPEC §6): load the
pretrained policy, its tokenizer, the reward and the corpus once; probe extractability
(MDL); run the PPO sweep as one compiled program; evaluate every run per partition.

`rlbias_jax.pipeline.run_experiment` dispatches here for `run.experiment = "nl"`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import jax

from rlbias_jax.checkpoints import SweepCheckpoints
from rlbias_jax.config import Config
from rlbias_jax.runs import atomic_write_csv, atomic_write_json, read_csv

Progress = Callable[[str], None]


def prepare(config: Config, progress: Progress):
    """(setup, task_data): the model, tokenizer and reward, and every task's prompt sets."""
    from rlbias_jax.rl import nl

    started = time.perf_counter()
    setup = nl.load_setup(config, progress)
    task_data = nl.build_all_task_data(config, setup.tokenizer)
    sizes = next(iter(task_data.values()))
    progress(
        f"corpus {config.task.corpus!r}: {len(config.task.task_ids)} tasks, prompts of {config.task.prompt_len} tokens "
        f"(test {', '.join(f'{p} {len(s)}' for p, s in sizes.test.items())}); loaded in {time.perf_counter() - started:.1f} s"
    )
    return setup, task_data


def run_probe_phase(config: Config, run_dir: Path, manifest: dict, progress: Progress, setup, task_data) -> None:
    from rlbias_jax.probing.nl import measure_nl_extractability

    if (run_dir / "extractability.csv").is_file():
        progress("extractability: already measured, skipping (resume)")
        return
    started = time.perf_counter()
    progress(f"extractability: MDL probes ({config.probe.mode} mode on the pretrained policy, {config.probe.seeds} seeds) "
             f"for tasks {list(config.task.task_ids)}")
    result = measure_nl_extractability(config, jax.random.key(config.run.seed + 1), setup, task_data, progress=progress)
    result.write(run_dir)
    manifest["phases"]["probe"] = {"wall_time_s": round(time.perf_counter() - started, 2)}
    atomic_write_json(run_dir / "manifest.json", manifest)


def run_sweep(config: Config, run_dir: Path, manifest: dict, progress: Progress, resume: bool, setup, task_data) -> list[dict]:
    from rlbias_jax.rl import nl, sweep

    started = time.perf_counter()
    specs = nl.run_specs(config)
    mesh = sweep.run_mesh()
    padded = sweep.padded_run_count(len(specs), mesh)
    states = nl.initial_states(config, setup, specs)
    data = nl.training_data(config, specs, task_data)
    states, data = (sweep.shard_runs(sweep.pad_runs(tree, len(specs), padded), mesh) for tree in (states, data))
    shared = setup.shared()
    progress(
        f"RL sweep: {len(specs)} runs ({len(config.task.task_ids)} tasks × {len(config.sweep.s_only_rates)} rates × "
        f"{config.sweep.seeds} seeds) as one program on {mesh.size} device(s); the frozen weights and the reference are shared"
    )
    checkpoints = SweepCheckpoints(run_dir / "checkpoints", config.run.checkpoint_keep)
    curves: list[dict] = []
    start_iteration = 0
    if resume and checkpoints.steps():
        start_iteration, states = checkpoints.restore_latest(states, on_skip=progress)
        if (run_dir / "curves.csv").is_file():
            curves = [row for row in read_csv(run_dir / "curves.csv") if int(row["iteration"]) < start_iteration]
        progress(f"resumed from the checkpoint at iteration {start_iteration}")
    train_chunk = nl.make_train_chunk(setup)

    def on_chunk(new_states, rows, report: sweep.ChunkReport) -> None:
        curves.extend(rows)
        atomic_write_csv(run_dir / "curves.csv", curves)
        checkpoints.save(report.iteration, new_states)
        last = [row for row in rows if row["iteration"] == report.iteration - 1]
        kl = sum(row["objective/kl"] for row in last) / max(len(last), 1)
        progress(f"{report.line()}  KL {kl:.3f}")

    states = sweep.run_chunks(
        train_chunk, states, data, shared,
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
    results = nl.evaluate_runs(config, setup, states, specs, task_data, shared)
    atomic_write_csv(run_dir / "results.csv", results)
    episodes = (config.ppo.iterations - start_iteration) * config.ppo.episodes_per_iteration * len(specs)
    manifest["phases"]["rl"] = {
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_wall_time_s": round(train_seconds, 2),
        "episodes": episodes,
        "episodes_per_s": round(episodes / max(train_seconds, 1e-9), 2),
        "runs": len(specs),
    }
    manifest["tasks_completed"] = sorted({spec.task_id for spec in specs})
    atomic_write_json(run_dir / "manifest.json", manifest)
    return results


def run(config: Config, run_dir: Path, manifest: dict, progress: Progress, *, resume: bool, probe: bool) -> list[dict]:
    """Probe (if asked) and sweep; returns the rows of results.csv."""
    setup, task_data = prepare(config, progress)
    if probe:
        run_probe_phase(config, run_dir, manifest, progress, setup, task_data)
    return run_sweep(config, run_dir, manifest, progress, resume, setup, task_data)
