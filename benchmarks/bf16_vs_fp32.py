"""Does bf16 compute change the toy results? The same small sweep in float32 and bfloat16.

Runs the toy pipeline (data, vmapped sweep, evaluation; no probing) twice with the same
seeds, `model.dtype` float32 then bfloat16, and compares each (rate, partition) score:
the bf16 − fp32 difference of the seed means against the seed-to-seed spread (standard
error of that difference). Also times both sweeps.

    python3 benchmarks/bf16_vs_fp32.py [--config configs/toy_default.toml] [--set ppo.iterations=30]
    python3 benchmarks/bf16_vs_fp32.py --full-grid      # the config's own grid, no reductions
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_average, machine, write_json  # noqa: E402

from rlbias_jax.cli import _parse_override  # noqa: E402
from rlbias_jax.config import load_config  # noqa: E402
from rlbias_jax.experiments.runner import run_experiment  # noqa: E402

DEFAULT_OVERRIDES = {"task.task_ids": [1], "sweep.s_only_rates": [0.0, 0.5], "sweep.seeds": 4, "ppo.iterations": 30}


def run(config_path: str, overrides: dict, dtype: str) -> tuple[list[dict], float, float]:
    config = load_config(REPO / config_path, {**overrides, "model.dtype": dtype})
    with tempfile.TemporaryDirectory() as out_dir:
        started = time.perf_counter()
        outcome = run_experiment(config, overwrite=True, out_dir=out_dir, probe=False, report=False, progress=lambda line: None)
        seconds = time.perf_counter() - started
    return outcome.results, seconds, outcome.manifest["phases"]["rl"]["episodes_per_s"]


def compare(fp32_rows: list[dict], bf16_rows: list[dict]) -> list[dict]:
    def by_cell(rows):
        cells: dict[tuple, list[float]] = {}
        for row in rows:
            if row["decoding"] == "sample":
                cells.setdefault((row["task_id"], row["s_only_rate"], row["partition"]), []).append(row["score"])
        return cells

    fp32, bf16 = by_cell(fp32_rows), by_cell(bf16_rows)
    table = []
    for cell in sorted(fp32):
        a, b = fp32[cell], bf16[cell]
        spread = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5 if len(a) > 1 else float("nan")
        difference = statistics.mean(b) - statistics.mean(a)
        table.append({
            "task_id": cell[0], "s_only_rate": cell[1], "partition": cell[2], "seeds": len(a),
            "fp32_mean": statistics.mean(a), "bf16_mean": statistics.mean(b), "difference": difference,
            "seed_standard_error": spread, "difference_in_standard_errors": difference / spread if spread else None,
        })
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy_default.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override)
    parser.add_argument("--full-grid", action="store_true", help="the config's tasks, rates, seeds and iterations (no default reductions)")
    parser.add_argument("--name", default="bf16_vs_fp32")
    args = parser.parse_args()
    overrides = {**({} if args.full_grid else DEFAULT_OVERRIDES), **dict(args.overrides)}
    fp32_rows, fp32_seconds, fp32_rate = run(args.config, overrides, "float32")
    bf16_rows, bf16_seconds, bf16_rate = run(args.config, overrides, "bfloat16")
    table = compare(fp32_rows, bf16_rows)
    # a cell with no seed spread on either side is within only if the means agree exactly
    within = [abs(row["difference"]) <= 2 * row["seed_standard_error"] for row in table if row["seeds"] > 1]
    result = {
        "benchmark": "bf16_vs_fp32",
        "machine": machine(),
        "config": args.config,
        "overrides": overrides,
        "fp32": {"seconds": fp32_seconds, "train_episodes_per_s": fp32_rate},
        "bf16": {"seconds": bf16_seconds, "train_episodes_per_s": bf16_rate},
        "cells": table,
        "cells_within_two_standard_errors": f"{sum(within)}/{len(within)}",
        "load_average_at_end": load_average(),
    }
    for row in table:
        print(f"task {row['task_id']} p={row['s_only_rate']:<5g} {row['partition']:8s} fp32 {row['fp32_mean']:.3f} "
              f"bf16 {row['bf16_mean']:.3f}  diff {row['difference']:+.3f} (seed s.e. {row['seed_standard_error']:.3f})")
    print(f"within 2 s.e.: {result['cells_within_two_standard_errors']}; episodes/s fp32 {fp32_rate:,.0f}, bf16 {bf16_rate:,.0f}")
    print(f"-> {write_json(args.name, result)}")


if __name__ == "__main__":
    main()
