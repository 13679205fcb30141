"""The toy RL experiment of Cruz et al. (SPEC §4): policy, runs, data and evaluation.

Token layout: symbols 0..V-1, EOS/PAD = V, UNK = V+1 (vocabulary V + 2).
Keys: a run's parameters depend only on its seed index (the same initialisation
for every task and rate); its training set on (task, seed) (so the sets of
different rates are drawn from the same pools); its rollout stream on
(task, rate, seed); test sets on the task alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax.config import Config
from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.heads import PolicyValueModel
from rlbias_jax.models.sampling import SamplingConfig
from rlbias_jax.rl.ppo import make_optimizer
from rlbias_jax.rl.rewards import batch_reward
from rlbias_jax.rl.sweep import RunSpec, decodings, evaluation_rows, make_evaluate
from rlbias_jax.rl.train import Policy, RunData, RunState, init_run_state
from rlbias_jax.tasks.toy import PARTITIONS, TASK_NAMES, make_test_sets, make_training_set

# Streams derived from the run seed, kept apart by fold_in tags.
_INIT, _DATA, _ROLLOUT, _TEST, _EVAL = range(5)


def toy_model_config(config: Config) -> GPT2Config:
    """The RL policy's GPT-2 (vocabulary V + 2: PAD/EOS = V, UNK = V + 1); the policy-mode probes use it too."""
    return GPT2Config(
        vocab_size=config.task.vocab_size + 2,
        n_layer=config.model.n_layer,
        n_head=config.model.n_head,
        d_model=config.model.d_model,
        max_len=config.model.max_len,
        dtype=config.model.dtype,
        param_dtype=config.model.param_dtype,
    )


def toy_policy(config: Config) -> tuple[PolicyValueModel, GPT2Config, Policy]:
    model_config = toy_model_config(config)
    model = PolicyValueModel(GPT2(model_config))
    symbols = config.task.vocab_size

    def apply_fn(params, tokens, positions, mask, cache):
        return model.apply({"params": params}, tokens, positions=positions, attention_mask=mask, cache=cache)

    def score_fn(responses, masks, labels, prompts):
        return batch_reward(config.reward.kind, responses, masks, labels, symbols)

    policy = Policy(
        apply_fn=apply_fn,
        init_cache=model_config.init_cache,
        score_fn=score_fn,
        sampling=SamplingConfig(
            max_new_tokens=config.ppo.response_len,
            temperature=config.ppo.temperature,
            eos_id=symbols,
            pad_id=symbols,
        ),
        optimizer=make_optimizer(config.ppo),
    )
    return model, model_config, policy


def run_specs(config: Config) -> list[RunSpec]:
    """Runs in a fixed order: task, then rate, then seed."""
    return [
        RunSpec(task_id=task_id, task_name=TASK_NAMES[task_id], s_only_rate=rate, rate_index=rate_index, seed=seed)
        for task_id in config.task.task_ids
        for rate_index, rate in enumerate(config.sweep.s_only_rates)
        for seed in range(config.sweep.seeds)
    ]


def _stream(base: jax.Array, tag: int, *indices: int) -> jax.Array:
    key = jax.random.fold_in(base, tag)
    for index in indices:
        key = jax.random.fold_in(key, index)
    return key


def init_params(model: PolicyValueModel, config: Config, key: jax.Array):
    dummy = jnp.zeros((1, config.task.seq_len), jnp.int32)
    return model.init(key, dummy)["params"]


def initial_states(config: Config, model, policy: Policy, specs: list[RunSpec]) -> tuple[RunState, object]:
    """Stacked RunStates [R] and the per-run reference parameters (None without a KL penalty)."""
    base = jax.random.key(config.run.seed)
    seeds = sorted({spec.seed for spec in specs})
    init = jax.jit(jax.vmap(lambda k: init_params(model, config, k)))
    params_by_seed = init(jnp.stack([_stream(base, _INIT, seed) for seed in seeds]))
    take = jnp.asarray([seeds.index(spec.seed) for spec in specs])
    params = jax.tree.map(lambda x: x[take], params_by_seed)
    keys = jnp.stack([_stream(base, _ROLLOUT, spec.task_id, spec.rate_index, spec.seed) for spec in specs])
    states = jax.vmap(lambda p, k: init_run_state(p, policy.optimizer, k, config.ppo.kl_coef))(params, keys)
    reference = params if config.ppo.kl_coef > 0 else None
    return states, reference


def training_data(config: Config, specs: list[RunSpec]) -> RunData:
    """Each run's fixed training set, stacked [R, N, L]."""
    base = jax.random.key(config.run.seed)
    task = config.task
    prompts, labels = [], []
    for task_id in task.task_ids:
        task_specs = [spec for spec in specs if spec.task_id == task_id]
        keys = jnp.stack([_stream(base, _DATA, task_id, spec.seed) for spec in task_specs])
        rates = jnp.asarray([spec.s_only_rate for spec in task_specs], jnp.float32)
        build = jax.vmap(functools.partial(
            make_training_set, task_id=task_id, train_size=task.train_size, vocab_size=task.vocab_size, seq_len=task.seq_len
        ))
        sets = build(keys, s_only_rate=rates)
        prompts.append(sets.tokens)
        labels.append(sets.labels)
    return RunData(prompts=jnp.concatenate(prompts), labels=jnp.concatenate(labels))


def test_sets(config: Config) -> dict[int, dict[str, np.ndarray]]:
    """{task_id: {partition: int32[n, L]}} — held out, shared by every run of a task."""
    base = jax.random.key(config.run.seed)
    return {
        task_id: make_test_sets(_stream(base, _TEST, task_id), task_id, config.task.test_sizes(), config.task.vocab_size, config.task.seq_len)
        for task_id in config.task.task_ids
    }


PARTITION_LABELS = {"both": 1, "neither": 0, "s_only": 0, "t_only": 1}


def evaluate_runs(config: Config, policy: Policy, states: RunState, specs: list[RunSpec]) -> list[dict]:
    """Mean reward per test partition for every run (sampled, and greedy if configured)."""
    base = jax.random.key(config.run.seed)
    sets = test_sets(config)

    def partition_inputs(partition: str):
        prompts = jnp.stack([sets[spec.task_id][partition] for spec in specs])
        labels = jnp.full(prompts.shape[:2], PARTITION_LABELS[partition], jnp.int32)
        keys = jnp.stack([_stream(base, _EVAL, spec.task_id, spec.rate_index, spec.seed, PARTITIONS.index(partition)) for spec in specs])
        return prompts, labels, keys

    return evaluation_rows(specs, states, PARTITIONS, decodings(config.eval.greedy), partition_inputs, make_evaluate(policy))


def use_target_table(rows: list[dict], decoding: str = "sample") -> dict[tuple[int, float], list[float]]:
    """{(task_id, rate): [use_target per seed, in seed order]} from result rows (`scores_by_run`'s use_target)."""
    import pandas as pd  # only for the end-of-run summary

    from rlbias_jax.analysis.tables import scores_by_run

    if not rows:
        return {}
    scores = scores_by_run(pd.DataFrame(rows))
    scores = scores[scores["decoding"] == decoding]
    table: dict[tuple[int, float], list[float]] = {}
    for task_id, rate, use_target in zip(scores["task_id"], scores["s_only_rate"], scores["use_target"]):
        table.setdefault((int(task_id), float(rate)), []).append(float(use_target))
    return table
