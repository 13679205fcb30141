"""One runner for every experiment: probe → baseline → sweep → evaluate → report.

`run_experiment(config)` picks the experiment (`make_experiment`), creates (or reopens,
to resume) the run directory, and runs the phases with one set of rules: every process
computes, only process 0 writes (`distributed.is_writer`); a phase is skipped on a
resume only when its record is in the manifest and its tables are on disk; writes are
atomic; the manifest records each phase's wall time.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import tomli_w

from rlbias_jax import distributed
from rlbias_jax.config import AlgorithmConfig, Config
from rlbias_jax.experiments.base import Experiment, Progress, run_specs
from rlbias_jax.experiments.sweep_phase import run_sweep_phase
from rlbias_jax.probing.blocks import block_ends
from rlbias_jax.probing.extractability import ExtractabilityResult, make_schedule, measure
from rlbias_jax.probing.online_code import OnlineCode
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


def default_progress(message: str) -> None:
    print(message, flush=True)


def _silent(message: str) -> None:
    pass


@dataclasses.dataclass
class RunOutcome:
    run_dir: Path
    manifest: dict
    results: list[dict]


def make_experiment(config: Config) -> Experiment:
    """The experiment `run.experiment` names (its models are loaded by `prepare`, not here)."""
    if config.run.experiment == "nl":
        from rlbias_jax.experiments.nl import NLExperiment

        return NLExperiment(config)
    from rlbias_jax.experiments.toy import ToyExperiment

    return ToyExperiment(config)


def check_inputs(config: Config) -> None:
    """The files and folders a config names exist (checked before any compute); ConfigError naming the field."""
    make_experiment(config).check_inputs()


# THE RUN DIRECTORY


def _write_manifest(run_dir: Path, manifest: dict) -> None:
    if distributed.is_writer():
        atomic_write_json(run_dir / "manifest.json", manifest)


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
        saved = dict(manifest.get("config") or {})
        saved.setdefault("algorithm", dataclasses.asdict(AlgorithmConfig()))  # runs made before [algorithm] existed: PPO
        changed = config_differences(resume_key(saved), resume_key(config.to_dict()))
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
        manifest = new_manifest(config.to_dict(), config.run.name, config.run.experiment)
        if distributed.is_writer():
            atomic_write_text(run_dir / "config.toml", tomli_w.dumps(_toml_ready(config.to_dict())))
    _write_manifest(run_dir, manifest)
    return run_dir, manifest


def _toml_ready(value):
    if isinstance(value, dict):
        return {key: _toml_ready(item) for key, item in value.items() if item is not None}
    if isinstance(value, tuple):
        return [_toml_ready(item) for item in value]
    return value


# THE PHASES


def measure_extractability(experiment: Experiment, key: jax.Array, *, progress: Progress = default_progress) -> ExtractabilityResult:
    """MDL(s), MDL(t) and their ratio for every task of the experiment (SPEC §5), from `key`."""
    config = experiment.config.validate()
    code = OnlineCode(experiment.probe_model(), make_schedule(config), block_ends(config.probe.probe_size),
                      vectorize=config.probe.vectorize)
    tasks = ((task_id, lambda task_id=task_id: experiment.probe_task(key, task_id)) for task_id in experiment.task_names)
    return measure(code, experiment.probe_mode, config.probe.seeds, tasks, min_accuracy=config.probe.min_accuracy,
                   progress=progress)


def run_probe_phase(experiment: Experiment, run_dir: Path, manifest: dict, progress: Progress) -> None:
    """MDL probing of every task into extractability.csv, mdl.csv and mdl_blocks.csv."""
    config = experiment.config
    # the phase record is written after all its tables, so a kill half-way through writing is redone
    if "probe" in manifest.get("phases", {}) and (run_dir / "extractability.csv").is_file():
        progress("extractability: already measured, skipping (resume)")
        return
    started = time.perf_counter()
    progress(f"extractability: MDL probes ({experiment.probe_mode} mode, {config.probe.seeds} seeds) for tasks {list(experiment.task_names)}")
    result = measure_extractability(experiment, jax.random.key(config.run.seed + 1), progress=progress)
    if distributed.is_writer():
        result.write(run_dir)
    manifest["phases"]["probe"] = {"wall_time_s": round(time.perf_counter() - started, 2)}
    _write_manifest(run_dir, manifest)
    for row in result.extractability_rows:
        progress(
            f"  task {row['task_id']} {row['task_name']:<20} MDL(s)/MDL(t) = {row['relative_extractability']:.3f}"
            f" ± {row['relative_extractability_sem']:.3f}"
        )


def run_experiment(config: Config, *, resume: bool = False, overwrite: bool = False, out_dir: str | None = None,
                   probe: bool | None = None, report: bool | None = None, progress: Progress = default_progress,
                   run_indices: list[int] | None = None) -> RunOutcome:
    """Every phase of one experiment into runs/<name>/ (docs/run_directory.md).

    `run_indices`: train only these runs (positions in `run_specs` order; `rlbias reproduce --runs`)."""
    wall_started = time.perf_counter()
    distributed.initialize(config.run)  # before any device is used
    experiment = make_experiment(config)
    experiment.check_inputs()
    if not distributed.is_writer():
        progress = _silent
    run_dir, manifest = start_run(config, resume=resume, overwrite=overwrite, out_dir=out_dir)
    try:
        progress(f"run directory: {run_dir}")
        experiment.prepare(progress)
        if config.run.probe if probe is None else probe:
            run_probe_phase(experiment, run_dir, manifest, progress)
        specs = run_specs(config, experiment.task_names)
        if run_indices is not None:
            specs = [specs[index] for index in run_indices]
        results = run_sweep_phase(experiment, specs, run_dir, manifest, progress, resume)
        manifest["status"] = "complete"
        manifest["finished_at"] = now_iso()
        manifest["wall_time_s"] = round(time.perf_counter() - wall_started, 2)  # of this invocation (a resumed run: since resuming)
        _write_manifest(run_dir, manifest)
        _print_summary(run_dir, results, progress)
        if (config.run.report if report is None else report) and distributed.is_writer():
            from rlbias_jax.analysis import write_report

            progress(f"report: {write_report([run_dir])}")
        return RunOutcome(run_dir=run_dir, manifest=manifest, results=results)
    finally:
        release_run(run_dir)


def probe_only(config: Config, *, overwrite: bool = False, out_dir: str | None = None,
               progress: Progress = default_progress) -> Path:
    """`rlbias probe`: the probe phase alone, into a run directory marked partial."""
    distributed.initialize(config.run)
    experiment = make_experiment(config)
    experiment.check_inputs()
    run_dir, manifest = start_run(config, resume=False, overwrite=overwrite, out_dir=out_dir)
    try:
        experiment.prepare(progress)
        run_probe_phase(experiment, run_dir, manifest, progress)
        manifest["status"] = "partial"
        _write_manifest(run_dir, manifest)
        return run_dir
    finally:
        release_run(run_dir)


def _print_summary(run_dir: Path, results: list[dict], progress: Progress) -> None:
    from rlbias_jax.analysis.summary import summary_lines

    baseline_path = run_dir / "baseline.csv"
    baseline = read_csv(baseline_path) if baseline_path.is_file() else None
    for line in summary_lines(results, baseline):
        progress(line)
