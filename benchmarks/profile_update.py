"""Where the time of a PPO update goes: a jax.profiler trace of `ppo.ppo_update`, by op kind.

Traces a few calls of the jitted update (one epoch over the iteration's minibatches, as
vmapped by the sweep program with one run) and sums the executed XLA ops by kind:
matmuls (XLA:CPU's YNNPACK dot fusions and plain dots), layout copies and transposes,
and the remaining fused elementwise/reduction kernels. Durations are wall times of
each op, so other users' load inflates them all alike; the shares are what matters.

    python3 benchmarks/profile_update.py [--setting paper_4x256] [--dtype float32]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PAPER, SMALL, load_average, machine, ppo_flops_per_episode, toy_config, write_json  # noqa: E402

from rlbias_jax.experiments.base import run_specs  # noqa: E402
from rlbias_jax.experiments.toy import ToyExperiment  # noqa: E402
from rlbias_jax.rl import ppo, train  # noqa: E402


def op_kind(name: str) -> str | None:
    if name.startswith(("ynn_fusion", "xnn_fusion", "dot", "onednn")):
        return "matmul"
    if re.match(r"(copy|transpose)", name) or "copy_bitcast" in name or "transpose_copy" in name:
        return "layout copies/transposes"
    if name.startswith(("$", "ThunkExecutor", "Pjit", "CommonPjRt", "PjRt", "end:")) or "Execute" in name:
        return None  # python frames and executor bookkeeping enclose the ops
    if "ThreadPool" in name:
        return "thread-pool waits"
    return "elementwise/reduction fusions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="paper_4x256", choices=["paper_4x256", "small_2x128"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--name", default="profile_update")
    args = parser.parse_args()

    setting = dataclasses.replace({"paper_4x256": PAPER, "small_2x128": SMALL}[args.setting], dtype=args.dtype, epochs=1)
    config = toy_config(setting)
    experiment = ToyExperiment(config)
    specs = run_specs(config, experiment.task_names)
    model_config, policy = experiment.model_config, experiment.policy
    states, data = experiment.initial_states(specs), experiment.training_data(specs)
    params = jax.tree.map(lambda x: x[0], states.train.params)
    prompts = data.prompts[0, : setting.episodes]
    tokens, _, mask = jax.jit(lambda p, x, k: train.rollout(policy, p, x, k))(params, prompts, jax.random.key(0))
    logprobs, values, _ = jax.jit(lambda p, t: ppo.response_statistics(policy.apply_fn, p, t, 5, 1.0))(params, tokens)
    advantages = jax.random.normal(jax.random.key(1), logprobs.shape)
    episodes = ppo.Episodes(tokens=tokens, response_mask=mask, logprobs=logprobs, values=values, advantages=advantages,
                            returns=values + advantages)
    # vmapped over a run axis of one, as in the sweep program
    update = jax.jit(jax.vmap(lambda s, e, k: ppo.ppo_update(s, e, k, policy.apply_fn, policy.optimizer, config.ppo)))
    batch = jax.tree.map(lambda x: x[None], (jax.tree.map(lambda x: x[0], states.train), episodes, jax.random.key(2)))

    def call():
        jax.block_until_ready(update(*batch))

    call()
    call()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.calls):
                call()
        path = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
        events = json.load(gzip.open(path))["traceEvents"]
    seconds: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and (kind := op_kind(event["name"])):
            seconds[kind] += event["dur"] * 1e-6 / args.calls
    total = sum(seconds.values())
    per_episode = ppo_flops_per_episode(model_config.num_params(), setting.n_layer, setting.d_model,
                                        config.task.seq_len, config.ppo.response_len, 1)
    result = {
        "benchmark": "profile_update",
        "machine": machine(),
        "setting": {**setting.__dict__, "note": "one epoch per call"},
        "op_seconds_per_call": dict(seconds),
        "op_share": {kind: value / total for kind, value in seconds.items()},
        "matmul_flops_per_s": per_episode["update"] * setting.episodes / seconds["matmul"] if seconds["matmul"] else None,
        "load_average_at_end": load_average(),
    }
    for kind, value in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"{kind:32s} {value * 1e3:9.1f} ms  {value / total:6.1%}")
    print(f"-> {write_json(args.name, result)}")


if __name__ == "__main__":
    main()
