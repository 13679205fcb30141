"""R toy runs as one vmapped program vs the same runs one after another.

Both sides use the same jitted chunk function (vmap over a run axis, scan over
iterations); side (b) calls it with a run axis of 1, R times. Model and batch are
those of configs/toy_default.toml. Episodes/s after warm-up (compile excluded).

    python3 benchmarks/sweep_scaling.py [--runs 16] [--iterations 3] [--config configs/toy_default.toml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, machine, write_json  # noqa: E402

from rlbias_jax.config import load_config, replace  # noqa: E402
from rlbias_jax.rl import sweep, toy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy_default.toml")
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=3, help="PPO iterations per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = load_config(args.config)
    config = replace(config, task={"task_ids": (1,)}, sweep={"s_only_rates": (0.0,), "seeds": args.runs})
    model, model_config, policy = toy.toy_policy(config)
    specs = toy.run_specs(config)
    states, reference = toy.initial_states(config, model, policy, specs)
    data = toy.training_data(config, specs)
    train_chunk = sweep.make_train_chunk(policy, config.ppo, per_run_reference=True)
    runs = len(specs)
    episodes = config.ppo.episodes_per_iteration * args.iterations * runs

    def take(tree, index):
        return jax.tree.map(lambda x: x[index : index + 1], tree)

    # (a) one program over all runs. The chunk function donates its state, so keep a copy.
    def vmapped():
        out, _ = train_chunk(jax.tree.map(lambda x: x.copy(), states), data, reference, length=args.iterations)
        jax.block_until_ready(out)

    # (b) the same jitted function, one run at a time
    singles = [(take(states, r), take(data, r), None if reference is None else take(reference, r)) for r in range(runs)]

    def sequential():
        for state, run_data, ref in singles:
            out, _ = train_chunk(jax.tree.map(lambda x: x.copy(), state), run_data, ref, length=args.iterations)
            jax.block_until_ready(out)

    print(f"{runs} runs, {config.ppo.episodes_per_iteration} episodes x {args.iterations} iterations each; compiling ...", flush=True)
    vmapped()
    sequential()
    vmapped_s = best_time(vmapped, args.repeats)
    sequential_s = best_time(sequential, args.repeats)
    result = {
        "benchmark": "sweep_scaling",
        "machine": machine(),
        "config": args.config,
        "model": {"n_layer": model_config.n_layer, "d_model": model_config.d_model, "n_head": model_config.n_head,
                  "vocab_size": model_config.vocab_size, "parameters": model_config.num_params()},
        "runs": runs,
        "episodes_per_iteration": config.ppo.episodes_per_iteration,
        "iterations_per_call": args.iterations,
        "vmapped_seconds": vmapped_s,
        "sequential_seconds": sequential_s,
        "vmapped_episodes_per_s": episodes / vmapped_s,
        "sequential_episodes_per_s": episodes / sequential_s,
        "speedup": sequential_s / vmapped_s,
    }
    path = write_json("sweep_scaling", result)
    print(f"vmapped   {result['vmapped_episodes_per_s']:10,.0f} episodes/s")
    print(f"sequential{result['sequential_episodes_per_s']:10,.0f} episodes/s")
    print(f"speedup   {result['speedup']:10.2f}x   -> {path}")


if __name__ == "__main__":
    main()
