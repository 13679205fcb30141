"""`rlbias reproduce RUN_DIR [--runs K]`: re-run a finished run from its saved config and
compare the new results.csv with the saved one (docs/reproduce.md).

- Expectation. Same platform, Python, package versions, devices, process count and git
  commit as the manifest recorded, and either every run re-run or a config with
  run.bitwise_across_devices (whose numbers do not depend on how many runs share the
  program): the results must be bitwise equal, and any difference is a failure. Otherwise
  a re-run may differ in the last bits, and RL amplifies them, so the comparison is
  statistical.
- Statistical comparison, per cell (task × s-only rate × decoding × partition): the
  re-run mean of the compared runs against the saved mean of the same runs; the cell
  differs when |difference| > Z_THRESHOLD · SE with SE = sd · sqrt(2 / n), sd the saved
  seed standard deviation of the cell (all its seeds; pooled over cells when a cell has
  one seed) and n the compared runs of the cell: the standard error of the difference of
  two independent n-run means.
- `--runs K` re-runs K runs picked deterministically (`choose_runs`: evenly spaced over
  the runs in task, rate, seed order) and compares only those.

The re-run goes to a hidden sibling folder of the run (removed afterwards unless
`keep`), without probing or report; `reproduce.json` is written into the run directory.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from rlbias_jax.config import Config, ConfigError, config_from_dict, load_config, replace
from rlbias_jax.experiments.base import Progress
from rlbias_jax.runs import RunDirError, atomic_write_json, environment_fields, now_iso, read_csv, read_manifest

REPRODUCE_FILE = "reproduce.json"
Z_THRESHOLD = 3.0
ROW_KEYS = ("task_id", "s_only_rate", "seed", "decoding", "partition")
CELL_KEYS = ("task_id", "task_name", "s_only_rate", "decoding", "partition")
RUN_KEYS = ("task_id", "s_only_rate", "seed")


def saved_config(run_dir: Path, manifest: dict) -> Config:
    """The run's config: config.toml as written at the start, else the manifest's copy."""
    path = run_dir / "config.toml"
    try:
        return load_config(path) if path.is_file() else config_from_dict(manifest.get("config") or {})
    except ConfigError as error:
        raise RunDirError(f"{run_dir}: its saved config no longer loads ({error})") from None


def environment(manifest: dict | None = None) -> dict:
    """What decides the bits of a result: from a manifest, or of this process when None."""
    if manifest is None:
        manifest = {**environment_fields(), "process_count": 1}  # the re-run is always one process
    devices = [(d.get("platform"), d.get("kind")) for d in manifest.get("devices") or []]
    return {"platform": manifest.get("platform"), "python": manifest.get("python"), "packages": manifest.get("packages"),
            "devices": devices, "process_count": manifest.get("process_count"), "git_sha": manifest.get("git_sha")}


def environment_differences(saved: dict, current: dict) -> list[str]:
    names = []
    for name in saved:
        if name == "packages":
            packages = sorted(set(saved[name] or {}) | set(current[name] or {}))
            names += [f"packages.{p}" for p in packages if (saved[name] or {}).get(p) != (current[name] or {}).get(p)]
        elif saved[name] != current[name]:
            names.append(name)
    return names


def choose_runs(num_runs: int, count: int | None) -> list[int]:
    """`count` run positions, evenly spaced over 0..num_runs-1 (all when count is None or ≥ num_runs)."""
    if count is None or count >= num_runs:
        return list(range(num_runs))
    if count < 1:
        raise ConfigError(f"--runs: must be >= 1 (got {count})")
    if count == 1:
        return [0]
    return sorted({round(i * (num_runs - 1) / (count - 1)) for i in range(count)})


def _row_key(row: dict) -> tuple:
    return int(row["task_id"]), float(row["s_only_rate"]), int(row["seed"]), row["decoding"], row["partition"]


def _seed_sd(original: list[dict]) -> tuple[dict, float]:
    """Per cell, the sample sd of the saved scores over seeds; and the pooled sd of cells with ≥ 2 seeds."""
    cells: dict[tuple, list[float]] = {}
    for row in original:
        cells.setdefault(tuple(row[k] for k in CELL_KEYS), []).append(float(row["score"]))
    sd = {cell: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for cell, v in cells.items()}
    variances = [(len(v) - 1, np.var(v, ddof=1)) for v in cells.values() if len(v) > 1]
    dof = sum(d for d, _ in variances)
    pooled = float(math.sqrt(sum(d * var for d, var in variances) / dof)) if dof else math.nan
    return sd, pooled


def compare_results(original: list[dict], reproduced: list[dict], expect_bitwise: bool) -> dict:
    """Compare the re-run's rows with the saved rows of the same runs (rows as in results.csv, text)."""
    saved = {_row_key(row): row for row in original}
    again = {_row_key(row): row for row in reproduced}
    missing = sorted(set(again) - set(saved))
    if missing:
        raise RunDirError(f"results.csv lacks {len(missing)} rows the re-run produced (e.g. {missing[0]}): it was edited or truncated")
    compared = [saved[key] for key in again]
    bitwise = all(saved[key] == again[key] for key in again)
    sd, pooled = _seed_sd(original)
    cells: dict[tuple, list[tuple[dict, dict]]] = {}
    for key in again:
        cells.setdefault(tuple(saved[key][k] for k in CELL_KEYS), []).append((saved[key], again[key]))
    differing = []
    for cell, pairs in cells.items():
        before = np.array([float(a["score"]) for a, _ in pairs])
        after = np.array([float(b["score"]) for _, b in pairs])
        difference = float(after.mean() - before.mean())
        cell_sd = sd[cell] if math.isfinite(sd[cell]) else pooled
        se = cell_sd * math.sqrt(2 / len(pairs)) if math.isfinite(cell_sd) else math.nan
        within = abs(difference) <= Z_THRESHOLD * se if math.isfinite(se) else difference == 0
        exact = all(a == b for a, b in pairs)
        if (expect_bitwise and not exact) or (not expect_bitwise and not within):
            differing.append({
                **dict(zip(CELL_KEYS, cell)), "original_mean": float(before.mean()), "reproduced_mean": float(after.mean()),
                "difference": difference, "seed_se": se if math.isfinite(se) else None, "within_z_se": bool(within),
                "runs": len(pairs),
            })
    return {"bitwise_equal": bitwise, "rows_compared": len(compared), "cells_compared": len(cells),
            "verdict": "reproduced" if not differing else "differs", "differing_cells": differing}


def reproduce(run_dir: Path, runs: int | None = None, *, keep: bool = False, progress: Progress = print) -> dict:
    """Re-run `run_dir` (or `runs` of its runs) from its saved config; write and return reproduce.json's content."""
    from rlbias_jax.experiments.base import run_specs
    from rlbias_jax.experiments.runner import make_experiment, run_experiment

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("status") != "complete" or not (run_dir / "results.csv").is_file():
        raise RunDirError(f"{run_dir}: not a finished run (status {manifest.get('status')!r}); reproduce needs its results.csv")
    # one process, whatever the original used (its process count is part of the environment)
    # (the baseline is not compared, so not re-evaluated: the trained runs do not depend on it)
    config = replace(saved_config(run_dir, manifest), run={"coordinator_address": "", "num_processes": 1, "process_id": 0},
                     eval={"baseline": False})
    num_runs = len(run_specs(config, make_experiment(config).task_names))
    indices = choose_runs(num_runs, runs)
    full = len(indices) == num_runs
    env_saved, env_now = environment(manifest), environment()
    env_changed = environment_differences(env_saved, env_now)
    expect_bitwise = not env_changed and (full or config.run.bitwise_across_devices)
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.reproduce-", dir=run_dir.parent))
    try:
        progress(f"reproduce: re-running {len(indices)} of {num_runs} runs of {run_dir} in {scratch}")
        outcome = run_experiment(config, out_dir=str(scratch), probe=False, report=False, progress=progress, run_indices=indices)
        original = read_csv(run_dir / "results.csv")
        result = compare_results(original, [{k: str(v) for k, v in row.items()} for row in read_csv(outcome.run_dir / "results.csv")],
                                 expect_bitwise)
        if full:
            result["bytes_equal"] = (run_dir / "results.csv").read_bytes() == (outcome.run_dir / "results.csv").read_bytes()
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    document = {
        "run_dir": str(run_dir),
        "created_at": now_iso(),
        "runs": "all" if full else indices,
        "runs_total": num_runs,
        "expectation": "bitwise" if expect_bitwise else "statistical",
        "environment_differences": env_changed,
        "z_threshold": Z_THRESHOLD,
        **result,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "kept_rerun": str(scratch) if keep else None,
    }
    atomic_write_json(run_dir / REPRODUCE_FILE, document)
    return document


def verdict_lines(document: dict) -> list[str]:
    """What `rlbias reproduce` prints."""
    runs = "all runs" if document["runs"] == "all" else f"{len(document['runs'])} of {document['runs_total']} runs"
    bits = "bitwise equal" if document["bitwise_equal"] else "not bitwise equal"
    why = ("same platform and package versions: bitwise equality expected" if document["expectation"] == "bitwise"
           else f"compared against the seed standard error (|Δ| ≤ {document['z_threshold']:g} SE); "
                f"environment differs in: {', '.join(document['environment_differences']) or 'nothing (a subset of runs)'}")
    lines = [f"{bits}: results.csv of {runs} ({document['rows_compared']} rows, {document['cells_compared']} cells); {why}",
             f"verdict: {document['verdict']}"]
    for cell in document["differing_cells"]:
        lines.append(f"  differs: task {cell['task_id']} {cell['task_name']}, rate {cell['s_only_rate']}, {cell['decoding']}, "
                     f"{cell['partition']}: {cell['original_mean']:.6g} → {cell['reproduced_mean']:.6g}")
    return lines
