"""An experiment from config to run directory: probe, RL sweep, evaluation, report.

This is where the packages are wired together (with the CLI on top of it).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import tomli_w

from rlbias_jax.checkpoints import SweepCheckpoints
from rlbias_jax.config import Config
from rlbias_jax.runs import (
    RunDirError,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    new_manifest,
    now_iso,
    prepare_run_dir,
    read_csv,
    read_manifest,
)

Progress = Callable[[str], None]


def default_progress(message: str) -> None:
    print(message, flush=True)


@dataclasses.dataclass
class RunOutcome:
    run_dir: Path
    manifest: dict
    results: list[dict]


def _config_dict(config: Config) -> dict:
    return config.to_dict()


def _write_manifest(run_dir: Path, manifest: dict) -> None:
    atomic_write_json(run_dir / "manifest.json", manifest)


def start_run(config: Config, *, resume: bool, overwrite: bool, out_dir: str | None = None) -> tuple[Path, dict]:
    run_dir = prepare_run_dir(out_dir or config.run.out_dir, config.run.name, resume=resume, overwrite=overwrite)
    if resume:
        manifest = read_manifest(run_dir)
        if manifest.get("config") != _config_dict(config):
            raise RunDirError(f"cannot resume {run_dir}: its manifest.json was written for a different configuration")
        manifest["status"] = "running"
        manifest.setdefault("resumed_at", []).append(now_iso())
    else:
        manifest = new_manifest(_config_dict(config), config.run.name, config.run.experiment)
        atomic_write_text(run_dir / "config.toml", tomli_w.dumps(_toml_ready(_config_dict(config))))
    _write_manifest(run_dir, manifest)
    return run_dir, manifest


def _toml_ready(value):
    if isinstance(value, dict):
        return {key: _toml_ready(item) for key, item in value.items() if item is not None}
    if isinstance(value, tuple):
        return [_toml_ready(item) for item in value]
    return value


def run_probe_phase(config: Config, run_dir: Path, manifest: dict, progress: Progress) -> None:
    from rlbias_jax.probing import measure_extractability

    if config.run.experiment == "nl":
        from rlbias_jax import nl_experiment

        nl_experiment.run_probe_phase(config, run_dir, manifest, progress, *nl_experiment.prepare(config, progress))
        return

    if (run_dir / "extractability.csv").is_file():
        progress("extractability: already measured, skipping (resume)")
        return
    started = time.perf_counter()
    progress(f"extractability: MDL probes ({config.probe.mode} mode, {config.probe.seeds} seeds) for tasks {list(config.task.task_ids)}")
    result = measure_extractability(config, jax.random.key(config.run.seed + 1), progress=progress)
    result.write(run_dir)
    manifest["phases"]["probe"] = {"wall_time_s": round(time.perf_counter() - started, 2)}
    _write_manifest(run_dir, manifest)
    for row in result.extractability_rows:
        progress(
            f"  task {row['task_id']} {row['task_name']:<20} MDL(s)/MDL(t) = {row['relative_extractability']:.3f}"
            f" ± {row['relative_extractability_sem']:.3f}"
        )


def run_toy_sweep(config: Config, run_dir: Path, manifest: dict, progress: Progress, resume: bool) -> list[dict]:
    from rlbias_jax.rl import sweep, toy

    started = time.perf_counter()
    model, model_config, policy = toy.toy_policy(config)
    specs = toy.run_specs(config)
    mesh = sweep.run_mesh()
    padded = sweep.padded_run_count(len(specs), mesh)
    states, reference = toy.initial_states(config, model, policy, specs)
    data = toy.training_data(config, specs)
    states, data, reference = (sweep.shard_runs(sweep.pad_runs(tree, len(specs), padded), mesh) if tree is not None else None
                               for tree in (states, data, reference))
    progress(
        f"RL sweep: {len(specs)} runs ({len(config.task.task_ids)} tasks × {len(config.sweep.s_only_rates)} rates × "
        f"{config.sweep.seeds} seeds) as one program on {mesh.size} device(s); {model_config.num_params():,} parameters per policy"
    )
    checkpoints = SweepCheckpoints(run_dir / "checkpoints", config.run.checkpoint_keep)
    curves: list[dict] = []
    start_iteration = 0
    if resume and checkpoints.steps():
        start_iteration, states = checkpoints.restore_latest(states, on_skip=progress)
        if (run_dir / "curves.csv").is_file():
            curves = [row for row in read_csv(run_dir / "curves.csv") if int(row["iteration"]) < start_iteration]
        progress(f"resumed from the checkpoint at iteration {start_iteration}")
    train_chunk = sweep.make_train_chunk(policy, config.ppo, per_run_reference=True)

    def on_chunk(new_states, rows, report: sweep.ChunkReport) -> None:
        curves.extend(rows)
        atomic_write_csv(run_dir / "curves.csv", curves)
        checkpoints.save(report.iteration, new_states)
        progress(report.line())

    states = sweep.run_chunks(
        train_chunk, states, data, reference,
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
    results = toy.evaluate_runs(config, policy, states, specs)
    atomic_write_csv(run_dir / "results.csv", results)
    episodes = (config.ppo.iterations - start_iteration) * config.ppo.episodes_per_iteration * len(specs)
    manifest["phases"]["rl"] = {
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_wall_time_s": round(train_seconds, 2),
        "episodes": episodes,
        "episodes_per_s": round(episodes / max(train_seconds, 1e-9), 1),
        "runs": len(specs),
    }
    manifest["tasks_completed"] = sorted({spec.task_id for spec in specs})
    _write_manifest(run_dir, manifest)
    return results


def summary_lines(results: list[dict]) -> list[str]:
    """use_target per task × rate (mean over seeds; sampled decoding) as printable lines."""
    from rlbias_jax.rl.toy import use_target_table

    table = use_target_table(results)
    rates = sorted({rate for _, rate in table})
    tasks = sorted({task for task, _ in table})
    names = {row["task_id"]: row["task_name"] for row in results}
    lines = ["use_target = (score(s_only) + score(t_only)) / 2, mean over seeds (sampled decoding)",
             f"{'task':<24}" + "".join(f"p={rate:<8g}" for rate in rates)]
    for task in tasks:
        cells = "".join(f"{np.mean(table[(task, rate)]):<10.3f}" for rate in rates)
        lines.append(f"{task:<3}{names[task]:<21}{cells}")
    partitions = {}
    for row in results:
        if row["decoding"] == "sample":
            partitions.setdefault((row["task_id"], row["partition"]), []).append(row["score"])
    lines.append("mean score per partition (all rates and seeds): " + "; ".join(
        f"task {task} " + " ".join(f"{part}={np.mean(partitions[(task, part)]):.2f}" for part in ("both", "neither", "s_only", "t_only"))
        for task in tasks
    ))
    return lines


def run_experiment(config: Config, *, resume: bool = False, overwrite: bool = False, out_dir: str | None = None,
                   probe: bool | None = None, report: bool | None = None, progress: Progress = default_progress) -> RunOutcome:
    wall_started = time.perf_counter()
    run_dir, manifest = start_run(config, resume=resume, overwrite=overwrite, out_dir=out_dir)
    progress(f"run directory: {run_dir}")
    if config.run.experiment == "nl":
        from rlbias_jax import nl_experiment

        results = nl_experiment.run(config, run_dir, manifest, progress, resume=resume,
                                    probe=config.run.probe if probe is None else probe)
    else:
        if config.run.probe if probe is None else probe:
            run_probe_phase(config, run_dir, manifest, progress)
        results = run_toy_sweep(config, run_dir, manifest, progress, resume)
    manifest["status"] = "complete"
    manifest["finished_at"] = now_iso()
    manifest["wall_time_s"] = round(time.perf_counter() - wall_started, 2)  # of this invocation (a resumed run: since resuming)
    _write_manifest(run_dir, manifest)
    for line in summary_lines(results):
        progress(line)
    if config.run.report if report is None else report:
        from rlbias_jax.analysis import write_report

        path = write_report([run_dir])
        progress(f"report: {path}")
    return RunOutcome(run_dir=run_dir, manifest=manifest, results=results)
