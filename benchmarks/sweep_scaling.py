"""R toy runs as one vmapped program vs the same runs one after another.

Both sides use the same jitted chunk function (vmap over a run axis, scan over
iterations); side (b) calls it with a run axis of 1, R times. Model and batch are
those of configs/toy_default.toml; `--episodes` adds smaller batches per iteration
(minibatch = min(config's, episodes)) to show where vmapping pays on this machine.
Episodes/s after warm-up (compile excluded), CPU-seconds used by each side, and
achieved GFLOP/s (analytic count, `common.ppo_flops_per_episode`).

    python3 benchmarks/sweep_scaling.py [--runs 16] [--episodes 32,256] [--iterations 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, ppo_flops_per_episode, timed_call, write_json  # noqa: E402

from rlbias_jax.config import load_config, replace  # noqa: E402
from rlbias_jax.experiments.base import run_specs  # noqa: E402
from rlbias_jax.experiments.toy import ToyExperiment  # noqa: E402
from rlbias_jax.rl import sweep  # noqa: E402


def measure(config, runs: int, iterations: int, repeats: int) -> dict:
    """Best-of-`repeats` wall and CPU seconds of both sides for one batch setting."""
    config = replace(config, task={"task_ids": (1,)}, sweep={"s_only_rates": (0.0,), "seeds": runs})
    experiment = ToyExperiment(config)
    model_config = experiment.model_config
    specs = run_specs(config, experiment.task_names)
    states, data, shared = experiment.initial_states(specs), experiment.training_data(specs), experiment.shared(specs)
    reference = shared.value
    train_chunk = sweep.make_train_chunk(experiment.build_policy, config.ppo, shared.axis)

    def take(tree, index):
        return jax.tree.map(lambda x: x[index : index + 1], tree)

    # (a) one program over all runs. The chunk function donates its state, so keep a copy.
    def vmapped():
        out, _ = train_chunk(jax.tree.map(lambda x: x.copy(), states), data, reference, length=iterations)
        jax.block_until_ready(out)

    # (b) the same jitted function, one run at a time
    singles = [(take(states, r), take(data, r), None if reference is None else take(reference, r)) for r in range(runs)]

    def sequential():
        for state, run_data, ref in singles:
            out, _ = train_chunk(jax.tree.map(lambda x: x.copy(), state), run_data, ref, length=iterations)
            jax.block_until_ready(out)

    vmapped()  # compile both
    sequential()
    timings = {"vmapped": [], "sequential": []}
    for _ in range(repeats):  # interleaved, so that load changes hit both sides alike
        for name, fn in (("vmapped", vmapped), ("sequential", sequential)):
            timings[name].append(timed_call(fn))
    episodes = config.ppo.episodes_per_iteration * iterations * runs
    per_episode = ppo_flops_per_episode(model_config.num_params(), model_config.n_layer, model_config.d_model,
                                        int(data.prompts.shape[-1]), config.ppo.response_len, config.ppo.epochs)["total"]
    entry = {
        "episodes_per_iteration": config.ppo.episodes_per_iteration,
        "minibatch_size": config.ppo.minibatch_size,
        "epochs": config.ppo.epochs,
        "flops_per_episode": per_episode,
        "model": {"n_layer": model_config.n_layer, "d_model": model_config.d_model, "n_head": model_config.n_head,
                  "vocab_size": model_config.vocab_size, "parameters": model_config.num_params()},
    }
    for name, calls in timings.items():
        wall, cpu = min(calls)
        entry[name] = {"seconds": wall, "cpu_seconds": cpu, "episodes_per_s": episodes / wall,
                       "cores_busy": cpu / wall, "gflops_per_s": episodes * per_episode / wall / 1e9}
    entry["speedup"] = entry["sequential"]["seconds"] / entry["vmapped"]["seconds"]
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy_default.toml")
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=3, help="PPO iterations per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--episodes", default=None,
                        help="comma-separated episodes per iteration (default: 32 and the config's)")
    args = parser.parse_args()

    config = load_config(args.config)
    sizes = ([int(x) for x in args.episodes.split(",")] if args.episodes
             else sorted({32, config.ppo.episodes_per_iteration}))
    mfu_path = RESULTS / "mfu.json"
    peak = json.loads(mfu_path.read_text()).get("peak_flops_per_s", {}).get("float32") if mfu_path.is_file() else None
    settings = []
    for size in sizes:
        minibatch = min(config.ppo.minibatch_size, size)
        print(f"{args.runs} runs, {size} episodes (minibatch {minibatch}) x {args.iterations} iterations each ...", flush=True)
        entry = measure(replace(config, ppo={"episodes_per_iteration": size, "minibatch_size": minibatch}),
                        args.runs, args.iterations, args.repeats)
        settings.append(entry)
        for name in ("vmapped", "sequential"):
            side = entry[name]
            print(f"  {name:<11}{side['episodes_per_s']:9,.0f} episodes/s  {side['gflops_per_s']:6.1f} GFLOP/s  "
                  f"{side['cores_busy']:.2f} cores busy")
        print(f"  speedup {entry['speedup']:.2f}x")
    result = {
        "benchmark": "sweep_scaling",
        "machine": machine(),
        "config": args.config,
        "runs": args.runs,
        "iterations_per_call": args.iterations,
        "fp32_gemm_peak_flops_per_s": peak,
        "settings": settings,
    }
    path = write_json("sweep_scaling", result)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
