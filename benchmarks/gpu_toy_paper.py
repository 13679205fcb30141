"""The toy paper grid end to end (`rlbias train`: data, the vmapped sweep, evaluation), timed.

    python3 benchmarks/gpu_toy_paper.py [--config configs/toy_paper.toml] [--set ppo.iterations=20]

Writes benchmarks/results/gpu_toy_paper.json (or $BENCH_RESULTS/...): wall time, the
training time, compilation (first chunk minus a steady chunk, from the times the chunks
are reported; the last chunk may be shorter) and episodes/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_average, machine, median, write_json  # noqa: E402

from rlbias_jax.cli import _parse_override  # noqa: E402
from rlbias_jax.config import load_config  # noqa: E402
from rlbias_jax.experiments.runner import run_experiment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy_paper.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override)
    parser.add_argument("--name", default="gpu_toy_paper")
    args = parser.parse_args()
    config = load_config(REPO / args.config, dict(args.overrides))
    marks: list[float] = []  # when the sweep started, then when each chunk was reported

    def progress(line: str) -> None:
        print(line, flush=True)
        if line.startswith("RL sweep:") or line.lstrip().startswith("iteration"):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out_dir:
        started = time.perf_counter()
        outcome = run_experiment(config, overwrite=True, out_dir=out_dir, probe=False, report=False, progress=progress)
        total = time.perf_counter() - started
    rl = outcome.manifest["phases"]["rl"]
    runs, iterations = rl["runs"], config.ppo.iterations
    chunk_episodes = runs * config.run.chunk_iterations * config.ppo.episodes_per_iteration
    chunk_seconds = [later - earlier for earlier, later in zip(marks[:-1], marks[1:])]
    steady = median(chunk_seconds[1:]) if len(chunk_seconds) > 1 else chunk_seconds[0]
    result = {
        "benchmark": "gpu_toy_paper",
        "machine": machine(),
        "config": args.config,
        "overrides": dict(args.overrides),
        "runs": runs,
        "iterations": iterations,
        "episodes_per_iteration": config.ppo.episodes_per_iteration,
        "model": {"n_layer": config.model.n_layer, "d_model": config.model.d_model, "dtype": config.model.dtype},
        "total_seconds": total,
        "train_seconds": rl["train_wall_time_s"],
        "rl_phase_seconds": rl["wall_time_s"],
        "chunk_seconds": chunk_seconds,
        "compile_seconds": max(chunk_seconds[0] - steady, 0.0),
        "episodes_per_s": rl["episodes_per_s"],
        "steady_episodes_per_s": chunk_episodes / steady,
        "load_average_at_end": load_average(),
    }
    print(f"{runs} runs x {iterations} iterations: {total:.0f} s total, {rl['episodes_per_s']:,.0f} episodes/s"
          f" -> {write_json(args.name, result)}")


if __name__ == "__main__":
    main()
