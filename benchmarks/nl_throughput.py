"""Single-run NL training throughput at nl_default's shapes, before vs after (issue 13 item 2).

SmolLM2-135M (bundled), top 2 of 30 blocks trained, 24 episodes of 12 + 8 tokens per iteration,
4 epochs of minibatches of 8, KL reference on (configs/nl_default.toml). Every variant is built
in this one process from the same loaded weights and timed round-robin with the others, so
that the machine's load (shared with other users) hits all of them alike; medians are reported.

Variants, each adding one change to the one before (`--variants` picks some):
  before            the code of commit 14f56e3: the sampler keeps no features, the teacher-forced
                    passes run the frozen trunk again over all P + N tokens, the top pads its
                    logits back to a zero [B, P + N, V] tensor and computes its norm and value head
                    everywhere; float32; one run padded to two in the sweep program
  compact_top       + the top's norm, value head and output head at the N response positions only
  sampler_features  + the trunk's output taken from the sampler (no second trunk pass)
  single_run        + one run is not padded to two (rl/sweep.padded_run_count)
  bf16              + model.dtype = "bfloat16": bf16 operands, float32 accumulation (the after path)

Phases (each jitted on its own, the frozen weights passed as arguments, timed after warm-up):
  rollout         KV-cache sampling of the 24 responses (prefill + one cached step per token)
  teacher_forced  the trunk's output for the teacher passes, old log-probs and values, reference log-probs
  update          4 epochs x 3 minibatches of forward + backward + Adam on the top
  iteration       the real sweep program (`rl.sweep.make_train_chunk`), `--iterations` per call,
                  with the variant's run count; episodes/s counts the one real run

    PYTHONPATH=$PWD python3 benchmarks/nl_throughput.py [--rounds 5] [--variants before,bf16]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_average, machine, median, timed_call, write_json  # noqa: E402

from rlbias_jax.config import load_config, replace  # noqa: E402
from rlbias_jax.experiments import nl  # noqa: E402
from rlbias_jax.experiments.base import run_specs  # noqa: E402
from rlbias_jax.models import split  # noqa: E402
from rlbias_jax.models.heads import PolicyOutput, PolicyValueModel  # noqa: E402
from rlbias_jax.models.layers import DTYPES  # noqa: E402
from rlbias_jax.rl import ppo, sweep, train  # noqa: E402

VARIANTS = ("before", "compact_top", "sampler_features", "single_run", "bf16")
VARIANT_NOTES = {
    "before": "commit 14f56e3: second trunk pass, top logits padded to [B, P+N, V], float32, one run padded to two",
    "compact_top": "+ the top's norm, value head and output head at the N response positions only",
    "sampler_features": "+ the trunk's output taken from the sampler (no second trunk pass)",
    "single_run": "+ a single run not padded to two in the sweep program",
    "bf16": "+ model.dtype bfloat16 (bf16 operands, float32 accumulation)",
}
PHASES = ("rollout", "teacher_forced", "update", "iteration")


# THE PRE-CHANGE PATH (commit 14f56e3), kept here to measure against


def padded_top(module, lm_params: dict, value_head: dict, hidden, first_trainable: int, head_positions: int) -> PolicyOutput:
    """`split.top` as it was: norm and values at every position, logits at the last `head_positions`
    positions but the final one, padded back to a zero [B, T, V] tensor."""
    config = module.config
    batch, length, _ = hidden.shape
    positions, allowed = split._full_sequence_inputs(batch, length)
    x = split._apply_blocks(module, lm_params, hidden, positions, allowed, range(first_trainable, config.n_layer))
    norm = module.final_norm()
    final = norm.apply({"params": lm_params[norm.name]}, x)
    values = (final.astype(jnp.float32) @ value_head["kernel"] + value_head["bias"])[..., 0]
    used = final[:, length - 1 - head_positions : length - 1].astype(DTYPES[config.dtype])
    logits = module.logits_from_params(lm_params, used).astype(jnp.float32)
    vocab = logits.shape[-1]
    padded = jnp.concatenate([jnp.zeros((batch, length - 1 - head_positions, vocab), jnp.float32), logits,
                              jnp.zeros((batch, 1, vocab), jnp.float32)], axis=1)
    return PolicyOutput(logits=padded, values=values)


def variant_builder(setup: nl.NLSetup, variant: str):
    """build(shared) -> (Policy, reference) for `variant`: the current policy with the changes after
    `variant` undone."""
    level = VARIANTS.index(variant)
    lm, first, response_len = setup.model.lm, setup.first_trainable_block, setup.config.ppo.response_len
    plain = PolicyValueModel(lm)  # keeps no features

    def build(shared: nl.SharedParams):
        policy = setup.build_policy(shared)
        if level < VARIANTS.index("sampler_features"):
            def apply_fn(trainable, tokens, positions, mask, cache):
                params = nl.merge_params(trainable, shared.frozen)
                return plain.apply({"params": params}, tokens, positions=positions, attention_mask=mask, cache=cache)

            policy = dataclasses.replace(policy, apply_fn=apply_fn)
        if level < VARIANTS.index("compact_top"):
            def features_fn(tokens):
                return split.trunk(lm, shared.frozen["lm"], tokens, first)  # all P + N tokens

            def teacher_fn(trainable, features, positions, mask, cache):
                params = {**shared.frozen["lm"], **trainable["lm"]}
                return padded_top(lm, params, trainable["value_head"], features, first, response_len)

            policy = dataclasses.replace(policy, features_fn=features_fn, teacher_fn=teacher_fn)
        return policy, shared.reference

    return build


# ONE VARIANT'S TIMED PHASES


def phase_fns(experiment: nl.NLExperiment, variant: str, iterations: int) -> dict:
    """{phase: blocking fn} of `variant`, compiled and run once."""
    setup, config = experiment.setup, experiment.config
    build = variant_builder(setup, variant)
    specs = run_specs(config, experiment.task_names)[:1]
    runs = 2 if VARIANTS.index(variant) < VARIANTS.index("single_run") else 1  # the old sweep padded one run to two
    shared = setup.shared()
    states = sweep.pad_runs(experiment.initial_states(specs), 1, runs)
    data = sweep.pad_runs(experiment.training_data(specs), 1, runs)
    ppo_config = config.ppo
    trainable = setup.initial_trainable
    train_state = jax.tree.map(lambda x: x[0], states.train)
    prompts = data.prompts[0, : ppo_config.episodes_per_iteration]
    eos_rule = (setup.sampling.eos_id, setup.sampling.min_new_tokens)

    @jax.jit
    def rollout(params, shared, prompts, key):
        return train.sample_episodes(build(shared)[0], params, prompts, key)

    @jax.jit
    def teacher(params, shared, tokens, generation):
        policy, reference = build(shared)
        inputs = train.teacher_inputs(policy, tokens, generation)
        stats = lambda p: ppo.response_statistics(policy.teacher_fn, p, tokens, ppo_config.response_len,  # noqa: E731
                                                  ppo_config.temperature, inputs, *eos_rule)
        logprobs, values, _ = stats(params)
        reference_logprobs, _, _ = stats(reference)
        return inputs, logprobs, values, reference_logprobs

    @jax.jit
    def update(state, shared, episodes, key):
        policy, _ = build(shared)
        return ppo.ppo_update(state, episodes, key, policy.teacher_fn, policy.optimizer, ppo_config, *eos_rule)

    chunk = sweep.make_train_chunk(build, ppo_config, shared_axis=None)
    tokens, generation = rollout(trainable, shared, prompts, jax.random.key(1))
    inputs, logprobs, values, _ = teacher(trainable, shared, tokens, generation)
    advantages = jax.random.normal(jax.random.key(2), logprobs.shape)
    episodes = ppo.Episodes(tokens=tokens, response_mask=generation.mask, logprobs=logprobs, values=values,
                            advantages=advantages, returns=values + advantages, inputs=inputs)

    def run_chunk():
        # the chunk donates its state: hand it a copy every call
        out, _ = chunk(jax.tree.map(lambda x: x.copy(), states), data, shared, length=iterations)
        jax.block_until_ready(out)

    fns = {
        "rollout": lambda: jax.block_until_ready(rollout(trainable, shared, prompts, jax.random.key(3))),
        "teacher_forced": lambda: jax.block_until_ready(teacher(trainable, shared, tokens, generation)),
        "update": lambda: jax.block_until_ready(update(train_state, shared, episodes, jax.random.key(4))),
        "iteration": run_chunk,
    }
    for fn in fns.values():  # compile and warm up
        fn()
    return fns


def experiment_for(config_path: str, dtype: str) -> nl.NLExperiment:
    config = load_config(REPO / config_path)
    config = replace(config, task={"task_ids": (1,)}, sweep={"s_only_rates": (0.0,), "seeds": 1}, model={"dtype": dtype})
    experiment = nl.NLExperiment(config)
    experiment.prepare(progress=lambda line: None)
    return experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/nl_default.toml")
    parser.add_argument("--variants", default="before,bf16", help=f"some of {','.join(VARIANTS)}")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2, help="iterations per call of the sweep program")
    parser.add_argument("--name", default="nl_throughput")
    args = parser.parse_args()
    variants = args.variants.split(",")
    phases = args.phases.split(",")
    unknown = [v for v in variants if v not in VARIANTS] + [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown variants or phases: {unknown}")

    result = {"benchmark": "nl_throughput", "machine": machine(), "config": args.config, "rounds": args.rounds,
              "iterations_per_call": args.iterations, "variants": {}, "notes": {v: VARIANT_NOTES[v] for v in variants}}
    experiments = {}
    fns = {}
    for variant in variants:
        dtype = "bfloat16" if variant == "bf16" else "float32"
        if dtype not in experiments:
            experiments[dtype] = experiment_for(args.config, dtype)
        print(f"{variant}: compiling ...", flush=True)
        all_fns = phase_fns(experiments[dtype], variant, args.iterations)
        fns[variant] = {phase: all_fns[phase] for phase in phases}
    ppo_config = experiments[next(iter(experiments))].config.ppo
    times = {v: {p: [] for p in phases} for v in variants}
    cpu_times = {v: {p: [] for p in phases} for v in variants}
    loads = []
    for round_index in range(args.rounds):  # round-robin over variants and phases
        for variant in variants:
            for phase in phases:
                wall, cpu = timed_call(fns[variant][phase])
                times[variant][phase].append(wall)
                cpu_times[variant][phase].append(cpu)
        loads.append(load_average())
        print(f"round {round_index + 1}/{args.rounds}: load {loads[-1]}", flush=True)

    episodes = ppo_config.episodes_per_iteration
    for variant in variants:
        entry = {}
        for phase in phases:
            seconds = median(times[variant][phase])
            entry[phase] = {"seconds": times[variant][phase], "cpu_seconds": cpu_times[variant][phase],
                            "median_seconds": seconds, "median_cpu_seconds": median(cpu_times[variant][phase])}
        if "iteration" in entry:
            per_iteration = entry["iteration"]["median_seconds"] / args.iterations
            entry["episodes_per_s"] = episodes / per_iteration
        result["variants"][variant] = entry
        print(f"{variant:17s} " + "  ".join(f"{p} {entry[p]['median_seconds'] * 1e3:8.1f} ms" for p in phases)
              + (f"  -> {entry['episodes_per_s']:.2f} episodes/s" if "episodes_per_s" in entry else ""))
    first, last = variants[0], variants[-1]
    if "episodes_per_s" in result["variants"][first]:
        result["speedup"] = result["variants"][last]["episodes_per_s"] / result["variants"][first]["episodes_per_s"]
        print(f"{last} vs {first}: {result['speedup']:.2f}x single-run episodes/s")
    result["shapes"] = {"episodes_per_iteration": episodes, "minibatch_size": ppo_config.minibatch_size,
                        "epochs": ppo_config.epochs, "prompt_len": experiments[next(iter(experiments))].config.task.prompt_len,
                        "response_len": ppo_config.response_len,
                        "trainable_layers": experiments[next(iter(experiments))].config.model.trainable_layers}
    result["load_average_per_round"] = loads
    result["load_average_at_end"] = load_average()
    print(f"-> {write_json(args.name, result)}")


if __name__ == "__main__":
    main()
