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

from rlbias_jax.config import Config
from rlbias_jax.runs import atomic_write_json

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
    from rlbias_jax.rl import nl
    from rlbias_jax.sweep_phase import SweepPlan, mean_kl_note, run_sweep_phase

    specs = nl.run_specs(config)
    shared = setup.shared()
    plan = SweepPlan(
        specs=specs,
        states=nl.initial_states(config, setup, specs),
        data=nl.training_data(config, specs, task_data),
        shared=shared,
        shared_per_run=False,
        train_chunk=nl.make_train_chunk(setup),
        evaluate=lambda trained: nl.evaluate_runs(config, setup, trained, specs, task_data, shared),
        description=(
            f"RL sweep: {len(specs)} runs ({len(config.task.task_ids)} tasks × {len(config.sweep.s_only_rates)} rates × "
            f"{config.sweep.seeds} seeds) as one program on {{devices}} device(s); the frozen weights and the reference are shared"
        ),
        chunk_note=mean_kl_note,
    )
    return run_sweep_phase(config, run_dir, manifest, progress, resume, plan, baseline=config.eval.baseline)


def run(config: Config, run_dir: Path, manifest: dict, progress: Progress, *, resume: bool, probe: bool) -> list[dict]:
    """Probe (if asked) and sweep; returns the rows of results.csv."""
    setup, task_data = prepare(config, progress)
    if probe:
        run_probe_phase(config, run_dir, manifest, progress, setup, task_data)
    return run_sweep(config, run_dir, manifest, progress, resume, setup, task_data)
