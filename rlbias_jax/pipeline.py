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

from rlbias_jax import distributed
from rlbias_jax.config import Config, ConfigError
from rlbias_jax.runs import (
    RunDirError,
    RunLock,
    atomic_write_json,
    atomic_write_text,
    check_run_dir,
    config_differences,
    new_manifest,
    now_iso,
    prepare_run_dir,
    read_csv,
    read_manifest,
    resume_key,
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
    if distributed.is_writer():
        atomic_write_json(run_dir / "manifest.json", manifest)


def check_inputs(config: Config) -> None:
    """The files and folders a config names exist (checked before any compute); ConfigError naming the field."""
    if config.run.experiment == "toy":
        if config.model.source != "random":
            raise ConfigError('model.source: the toy experiment trains a randomly initialised GPT-2; set model.source = "random"')
        return
    from rlbias_jax.models.loading import ModelLoadError, resolve_source

    named = [("model.source", config.model.source)]
    if config.reward.kind == "classifier":
        named.append(("reward.model", config.reward.model))
    for field, source in named:
        try:
            resolve_source(source)
        except ModelLoadError as error:
            raise ConfigError(f"{field}: {error}") from None
    from rlbias_jax.tasks.corpus import BUNDLED_CORPORA, IMDB_NAMES

    corpus = config.task.corpus
    if corpus not in BUNDLED_CORPORA and corpus not in IMDB_NAMES and not Path(corpus).expanduser().is_file():
        known = ", ".join([*BUNDLED_CORPORA, *IMDB_NAMES])
        raise ConfigError(f"task.corpus: {corpus!r} is neither a known corpus ({known}) nor an existing text file")


_LOCKS: dict[Path, RunLock] = {}


def release_run(run_dir: Path) -> None:
    """Release this process's lock on a run directory (taken by start_run)."""
    lock = _LOCKS.pop(Path(run_dir).resolve(), None)
    if lock is not None:
        lock.release()


def start_run(config: Config, *, resume: bool, overwrite: bool, out_dir: str | None = None) -> tuple[Path, dict]:
    """Create (or reopen, to resume) the run directory and its manifest.

    Every process checks the rules before process 0 touches the disk, so a user error
    stops all of them alike."""
    root = out_dir or config.run.out_dir
    run_dir = check_run_dir(root, config.run.name, resume=resume, overwrite=overwrite)
    if resume:
        manifest = read_manifest(run_dir)
        changed = config_differences(resume_key(manifest.get("config") or {}), resume_key(_config_dict(config)))
        if changed:
            shown = ", ".join(changed[:5]) + (" …" if len(changed) > 5 else "")
            raise RunDirError(f"cannot resume {run_dir}: the configuration differs from the one it was started with ({shown})")
        manifest["status"] = "running"
        manifest.setdefault("resumed_at", []).append(now_iso())
    distributed.barrier("rlbias:run-dir-checked")
    if distributed.is_writer():
        prepare_run_dir(root, config.run.name, resume=resume, overwrite=overwrite)
        _LOCKS[run_dir.resolve()] = RunLock(run_dir).acquire()  # held until release_run / process exit
    distributed.barrier("rlbias:run-dir-ready")
    if not resume:
        manifest = new_manifest(_config_dict(config), config.run.name, config.run.experiment)
        if distributed.is_writer():
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

    # the phase record is written after all its tables, so a kill half-way through writing is redone
    if "probe" in manifest.get("phases", {}) and (run_dir / "extractability.csv").is_file():
        progress("extractability: already measured, skipping (resume)")
        return
    started = time.perf_counter()
    progress(f"extractability: MDL probes ({config.probe.mode} mode, {config.probe.seeds} seeds) for tasks {list(config.task.task_ids)}")
    result = measure_extractability(config, jax.random.key(config.run.seed + 1), progress=progress)
    if distributed.is_writer():
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
    from rlbias_jax.sweep_phase import SweepPlan, run_sweep_phase

    model, model_config, policy = toy.toy_policy(config)
    specs = toy.run_specs(config)
    states, reference = toy.initial_states(config, model, policy, specs)
    plan = SweepPlan(
        specs=specs,
        states=states,
        data=toy.training_data(config, specs),
        shared=reference,
        shared_per_run=True,
        train_chunk=sweep.make_train_chunk(policy, config.ppo, per_run_reference=True),
        evaluate=lambda trained: toy.evaluate_runs(config, policy, trained, specs),
        description=(
            f"RL sweep: {len(specs)} runs ({len(config.task.task_ids)} tasks × {len(config.sweep.s_only_rates)} rates × "
            f"{config.sweep.seeds} seeds) as one program on {{devices}} device(s); {model_config.num_params():,} parameters per policy"
        ),
    )
    return run_sweep_phase(config, run_dir, manifest, progress, resume, plan, baseline=config.eval.baseline)


_PARTITIONS = ("both", "neither", "s_only", "t_only")  # the same names in the toy and NL experiments


def summary_lines(results: list[dict], baseline: list[dict] | None = None) -> list[str]:
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
        lines.append(f"{task:<3}{names[task][:20]:<21}{cells}")
    means = _mean_scores(results)
    lines.append("mean score per partition (all rates and seeds): " + "; ".join(
        f"task {task} " + " ".join(f"{part}={means[(task, part)]:.2f}" for part in _PARTITIONS)
        for task in tasks
    ))
    if baseline:
        lines += baseline_lines(baseline, results)
    return lines


def _mean_scores(rows: list[dict]) -> dict[tuple[int, str], float]:
    """{(task_id, partition): mean score} over rates and seeds (sampled decoding)."""
    cells: dict[tuple[int, str], list[float]] = {}
    for row in rows:
        if row["decoding"] == "sample":
            cells.setdefault((int(row["task_id"]), row["partition"]), []).append(float(row["score"]))
    return {key: float(np.mean(values)) for key, values in cells.items()}


def baseline_lines(baseline: list[dict], results: list[dict]) -> list[str]:
    """Mean score per task and partition before -> after training (sampled decoding)."""
    before, after = _mean_scores(baseline), _mean_scores(results)
    partitions = _PARTITIONS
    lines = ["score before -> after training (mean over rates and seeds, sampled decoding)",
             f"{'task':<6}" + "".join(f"{part:<16}" for part in partitions)]
    for task in sorted({task for task, _ in after}):
        cells = "".join(
            f"{before.get((task, part), float('nan')):.2f} -> {after[(task, part)]:.2f}    " if (task, part) in after else f"{'':16}"
            for part in partitions
        )
        lines.append(f"{task:<6}{cells}")
    return lines


def run_experiment(config: Config, *, resume: bool = False, overwrite: bool = False, out_dir: str | None = None,
                   probe: bool | None = None, report: bool | None = None, progress: Progress = default_progress) -> RunOutcome:
    wall_started = time.perf_counter()
    distributed.initialize(config.run)  # before any device is used
    check_inputs(config)
    if not distributed.is_writer():
        progress = _silent
    run_dir, manifest = start_run(config, resume=resume, overwrite=overwrite, out_dir=out_dir)
    try:
        return _run_phases(config, run_dir, manifest, wall_started, resume=resume, probe=probe, report=report, progress=progress)
    finally:
        release_run(run_dir)


def _silent(message: str) -> None:
    pass


def _run_phases(config: Config, run_dir: Path, manifest: dict, wall_started: float, *, resume: bool,
                probe: bool | None, report: bool | None, progress: Progress) -> RunOutcome:
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
    baseline_path = run_dir / "baseline.csv"
    baseline = read_csv(baseline_path) if baseline_path.is_file() else None
    for line in summary_lines(results, baseline):
        progress(line)
    if (config.run.report if report is None else report) and distributed.is_writer():
        from rlbias_jax.analysis import write_report

        path = write_report([run_dir])
        progress(f"report: {path}")
    return RunOutcome(run_dir=run_dir, manifest=manifest, results=results)
