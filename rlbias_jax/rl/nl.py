"""The natural-language RL experiment of Cruz et al. (SPEC §6): a pretrained LM learns to
write positively iff a prefix feature holds, with PPO, a frozen reference and adaptive KL.

The sweep (task × s-only rate × seed) is one compiled program, as in the toy pipeline:
`jit(vmap(scan(ppo_iteration)))`. What differs is what is shared. The pretrained weights
are split into a *trainable* part, copied per run (with its Adam state), and a *frozen*
part that every run shares, passed once into the program (`SharedParams`, vmapped with
in_axes None, never copied):

- `model.trainable_layers = 0` (the paper): everything is trainable; the frozen part is
  empty and the reference is one shared copy of the initial weights.
- `model.trainable_layers = k > 0` (the CPU default's scale-down): only the top k
  transformer blocks, the final norm and the value head train; the embeddings (tied
  with the output head) and the lower blocks are frozen and shared by the policies and
  the reference, whose own copy is only the initial top blocks.

The reward model's parameters (or the lexicon tables) travel in `SharedParams` as well.

Keys: a run's rollout stream depends on (task, rate index, seed); evaluation keys on
(task, rate index, seed, partition); data on the task and seed (`rlbias_jax.tasks.nl`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax import distributed
from rlbias_jax.config import Config, check_model_context
from rlbias_jax.models import split
from rlbias_jax.models.heads import PolicyValueModel
from rlbias_jax.models.sampling import SamplingConfig
from rlbias_jax.rl.ppo import make_optimizer
from rlbias_jax.rl.sentiment import ClassifierReward, LexiconReward, classifier_reward, normalised_score
from rlbias_jax.rl import sweep
from rlbias_jax.rl.sweep import RunSpec
from rlbias_jax.rl.train import Policy, RunData, RunState, evaluate_partition, init_run_state, ppo_iteration
from rlbias_jax.tasks import nl as nl_tasks
from rlbias_jax.tasks.corpus import load_corpus

_ROLLOUT, _EVAL = 2, 4
_BLOCK = re.compile(r"^(?:h|layers)_(\d+)$")
_FINAL_NORMS = ("ln_f", "norm", "final_layer_norm")


@flax.struct.dataclass
class SharedParams:
    """Passed once into the sweep program and shared by every run (vmap in_axes None)."""

    frozen: dict  # LM parameters that never train (may be empty)
    reference: dict  # the initial trainable parameters: the KL reference's own part
    reward: object  # reward-model parameters or lexicon tables


# SPLITTING THE WEIGHTS


def split_params(params: dict, trainable_layers: int) -> tuple[dict, dict]:
    """(trainable, frozen) halves of PolicyValueModel params {"lm": …, "value_head": …}.

    trainable_layers = 0: everything trains. k > 0: the top k blocks, the final norm and
    the value head train; embeddings, lower blocks and any untied output head are frozen.
    """
    if trainable_layers == 0:
        return params, {}
    lm = params["lm"]
    blocks = sorted(int(m.group(1)) for m in map(_BLOCK.match, lm) if m)
    if not blocks:
        raise ValueError(f"cannot find transformer blocks among the LM parameters {sorted(lm)}")
    if trainable_layers > len(blocks):
        raise ValueError(f"model.trainable_layers = {trainable_layers}, but the model has only {len(blocks)} blocks")
    first = len(blocks) - trainable_layers

    def trains(name: str) -> bool:
        match = _BLOCK.match(name)
        return (match is not None and int(match.group(1)) >= first) or name in _FINAL_NORMS

    trainable = {"lm": {k: v for k, v in lm.items() if trains(k)}, "value_head": params["value_head"]}
    frozen = {"lm": {k: v for k, v in lm.items() if not trains(k)}}
    return trainable, frozen


def merge_params(trainable: dict, frozen: dict) -> dict:
    """The full parameter tree again (a pure restructuring: no copies under jit)."""
    if not frozen:
        return trainable
    return {"lm": {**frozen["lm"], **trainable["lm"]}, "value_head": trainable["value_head"]}


# THE POLICY


@dataclasses.dataclass(frozen=True, eq=False)
class NLSetup:
    """Host-side pieces of the experiment: the model, tokenizer, reward and data."""

    config: Config
    model: PolicyValueModel
    model_config: object
    tokenizer: nl_tasks.TextTokenizer
    reward: LexiconReward | ClassifierReward
    sampling: SamplingConfig
    initial_trainable: dict
    frozen: dict
    loaded: object  # rlbias_jax.models.loading.LoadedModel

    def build_policy(self, shared: SharedParams) -> Policy:
        """The Policy of one program; `shared` may be traced (its arrays are arguments, not constants)."""
        model = self.model

        def apply_fn(trainable, tokens, positions, mask, cache):
            params = merge_params(trainable, shared.frozen)
            return model.apply({"params": params}, tokens, positions=positions, attention_mask=mask, cache=cache)

        features_fn = teacher_fn = None
        if self.frozen:
            # frozen trunk once per iteration, trainable top per pass (rlbias_jax.models.split)
            first = self.first_trainable_block
            response_len = self.config.ppo.response_len

            def features_fn(tokens):
                return split.trunk(model.lm, shared.frozen["lm"], tokens, first)

            def teacher_fn(trainable, features, positions, mask, cache):
                del positions, mask, cache  # full, unpadded sequences
                lm = {**shared.frozen["lm"], **trainable["lm"]}
                return split.top(model.lm, lm, trainable["value_head"], features, first, response_len)

        return Policy(
            apply_fn=apply_fn,
            init_cache=self.model_config.init_cache,
            score_fn=self.reward.score_fn(shared.reward),
            sampling=self.sampling,
            optimizer=make_optimizer(self.config.ppo),
            features_fn=features_fn,
            teacher_fn=teacher_fn,
        )

    @property
    def first_trainable_block(self) -> int:
        return self.model_config.n_layer - self.config.model.trainable_layers

    def shared(self) -> SharedParams:
        return SharedParams(frozen=self.frozen, reference=self.initial_trainable, reward=self.reward.params())


def load_setup(config: Config, progress: Callable[[str], None] = print) -> NLSetup:
    """Load the pretrained policy, its tokenizer and the reward (errors name what is missing)."""
    from rlbias_jax.models.loading import load_pretrained

    loaded = load_pretrained(config.model.source, dtype=config.model.dtype, param_dtype=config.model.param_dtype)
    check_model_context(config, loaded.config.max_len, loaded.source)
    if loaded.tokenizer is None:
        from rlbias_jax.models.loading import ModelLoadError

        raise ModelLoadError(f"the policy checkpoint {loaded.source} has no tokenizer; the NL tasks need one")
    tokenizer = nl_tasks.HFTokenizer(loaded.tokenizer)
    model = PolicyValueModel(loaded.module)
    width = loaded.config.d_model
    params = {"lm": loaded.params, "value_head": {"kernel": jnp.zeros((width, 1), jnp.float32), "bias": jnp.zeros((1,), jnp.float32)}}
    trainable, frozen = split_params(params, config.model.trainable_layers)
    reward = make_reward(config, tokenizer, loaded)
    sampling = loaded.sampling_config(config.ppo.response_len, temperature=config.ppo.temperature,
                                      min_new_tokens=config.ppo.min_response_len)
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    progress(f"policy {loaded.source}: {count(trainable):,} trainable and {count(frozen):,} frozen parameters; "
             f"reward {reward.name}")
    return NLSetup(config, model, loaded.config, tokenizer, reward, sampling, trainable, frozen, loaded)


def make_reward(config: Config, tokenizer: nl_tasks.HFTokenizer, loaded) -> LexiconReward | ClassifierReward:
    if config.reward.kind == "vader_lexicon":
        return LexiconReward.for_tokenizer(tokenizer.decode, loaded.config.vocab_size, condition=config.reward.condition)
    if config.reward.kind == "classifier":
        return classifier_reward(config.reward.model, tokenizer.decode, loaded.pad_id, config.reward.max_len,
                                 condition=config.reward.condition)
    raise ValueError(f"reward.kind {config.reward.kind!r} is not an NL reward (vader_lexicon, classifier)")


# RUNS, DATA, STATES


def run_specs(config: Config) -> list[RunSpec]:
    """Runs in a fixed order: task, then rate, then seed."""
    return [
        RunSpec(task_id=task_id, task_name=nl_tasks.TASK_NAMES[task_id], s_only_rate=rate, rate_index=rate_index, seed=seed)
        for task_id in config.task.task_ids
        for rate_index, rate in enumerate(config.sweep.s_only_rates)
        for seed in range(config.sweep.seeds)
    ]


def build_all_task_data(config: Config, tokenizer: nl_tasks.TextTokenizer) -> dict[int, nl_tasks.NLTaskData]:
    """Test sets, training pools and probing sets of every task (host side; errors name the shortfall)."""
    texts = load_corpus(config.task.corpus)
    return {
        task_id: nl_tasks.build_task_data(
            task_id, texts, tokenizer, config.task.prompt_len, test_sizes=config.task.test_sizes(),
            train_size=config.task.train_size, max_s_only_rate=max(config.sweep.s_only_rates),
            probe_size=config.probe.probe_size, seed=config.run.seed,
            source=config.task.corpus,
        )
        for task_id in config.task.task_ids
    }


def training_data(config: Config, specs: list[RunSpec], task_data: dict[int, nl_tasks.NLTaskData]) -> RunData:
    """Each run's fixed training set, stacked [R, N, P]."""
    sets = [task_data[spec.task_id].training_set(spec.s_only_rate, config.task.train_size, spec.seed) for spec in specs]
    return RunData(prompts=jnp.asarray(np.stack([s[0] for s in sets])), labels=jnp.asarray(np.stack([s[1] for s in sets])))


def _stream(base: jax.Array, tag: int, *indices: int) -> jax.Array:
    key = jax.random.fold_in(base, tag)
    for index in indices:
        key = jax.random.fold_in(key, index)
    return key


def initial_states(config: Config, setup: NLSetup, specs: list[RunSpec]) -> RunState:
    """Stacked RunStates [R]: every run starts from the same pretrained weights."""
    base = jax.random.key(config.run.seed)
    keys = jnp.stack([_stream(base, _ROLLOUT, spec.task_id, spec.rate_index, spec.seed) for spec in specs])
    optimizer = make_optimizer(config.ppo)
    return jax.vmap(lambda key: init_run_state(setup.initial_trainable, optimizer, key, config.ppo.kl_coef))(keys)


# THE COMPILED PROGRAMS


def make_train_chunk(setup: NLSetup) -> Callable:
    """jit(vmap(scan(ppo_iteration))) with the shared parameters broadcast, not copied:
    (states[R], data[R], shared, length) -> (states, metrics[R, length])."""
    config = setup.config.ppo

    def train_chunk(states: RunState, data: RunData, shared: SharedParams, length: int):
        policy = setup.build_policy(shared)

        def one_run(state: RunState, run_data: RunData):
            def body(carry: RunState, _):
                return ppo_iteration(carry, run_data, shared.reference, policy, config)

            return jax.lax.scan(body, state, None, length=length)

        return jax.vmap(one_run)(states, data)

    jitted = jax.jit(train_chunk, static_argnames=("length",), donate_argnums=(0,), compiler_options=sweep.compiler_options())
    return distributed.ShardwiseProgram(jitted)


@functools.lru_cache(maxsize=4)
def make_evaluate(setup: NLSetup) -> Callable:
    """(trainable[R], shared, prompts[R, n, P], labels[R, n], keys[R]) -> mean raw reward[R]."""

    def evaluate(trainable, shared, prompts, labels, keys, greedy: bool):
        policy = setup.build_policy(shared)
        return jax.vmap(lambda p, x, y, k: evaluate_partition(policy, p, x, y, k, greedy))(trainable, prompts, labels, keys)

    return jax.jit(evaluate, static_argnames=("greedy",), compiler_options=sweep.compiler_options())


def evaluate_runs(config: Config, setup: NLSetup, states: RunState, specs: list[RunSpec],
                  task_data: dict[int, nl_tasks.NLTaskData], shared: SharedParams) -> list[dict]:
    """Normalised score and raw reward per test partition for every run (docs/run_directory.md)."""
    base = jax.random.key(config.run.seed)
    evaluate = make_evaluate(setup)

    def partition_inputs(partition: str):
        prompts = jnp.asarray(np.stack([task_data[spec.task_id].test[partition].tokens for spec in specs]))
        labels = jnp.full(prompts.shape[:2], nl_tasks.PARTITION_LABELS[partition], jnp.int32)
        keys = jnp.stack([_stream(base, _EVAL, spec.task_id, spec.rate_index, spec.seed, nl_tasks.PARTITIONS.index(partition))
                          for spec in specs])
        return prompts, labels, keys

    def evaluate_with_shared(trainable, prompts, labels, keys, greedy: bool):
        return evaluate(trainable, shared, prompts, labels, keys, greedy=greedy)

    return sweep.evaluation_rows(specs, states, nl_tasks.PARTITIONS, sweep.decodings(config.eval.greedy),
                                 partition_inputs, evaluate_with_shared, score_of=normalised_score)
