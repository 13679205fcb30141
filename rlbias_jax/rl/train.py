"""One iteration of one run (PPO, GRPO or RLOO): sample prompts, roll out, score, compute advantages, update.

Everything here is a pure function of explicit state and keys; `rlbias_jax.rl.sweep`
vmaps it over runs and scans it over iterations.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlbias_jax.config import AlgorithmConfig, PPOConfig
from rlbias_jax.models.sampling import Generation, SamplingConfig, generate
from rlbias_jax.rl.gae import masked_gae, whiten
from rlbias_jax.rl.kl import adaptive_kl_update, kl_per_token
from rlbias_jax.rl.critic_free import critic_free_loss, loss_side_kl_per_token, sequence_advantages
from rlbias_jax.rl.ppo import Episodes, TrainState, masked_mean, ppo_loss, ppo_update, response_statistics

# score(responses int32[B, N], mask bool[B, N], labels int32[B], prompts int32[B, P]) -> float32[B]
ScoreFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class RunState:
    """Everything that changes during one run's training (a leading run axis in sweeps)."""

    train: TrainState
    key: jax.Array
    kl_coef: jax.Array  # float32[]
    iteration: jax.Array  # int32[]
    failed: jax.Array  # bool[]: a NaN/inf was seen; the run is frozen from then on
    failed_iteration: jax.Array  # int32[], -1 when healthy


@flax.struct.dataclass
class RunData:
    """A run's fixed training set (prompts and labels)."""

    prompts: jax.Array  # int32[N, P]
    labels: jax.Array  # int32[N]


@dataclasses.dataclass(frozen=True)
class Policy:
    """The static pieces an iteration needs: how to apply the model and how to score."""

    apply_fn: Callable  # (params, tokens, positions, mask, cache) -> PolicyOutput
    init_cache: Callable  # (batch, max_len) -> KVCache
    score_fn: ScoreFn
    sampling: SamplingConfig
    optimizer: optax.GradientTransformation
    # Optional split of the teacher-forced passes (old log-probs, reference, PPO loss) for a
    # partly frozen model: features_fn(tokens [B, P + N]) runs the frozen trunk once per iteration
    # over positions 0 … P + N − 2 (the last token emits nothing) and teacher_fn(params, features,
    # ...) the trainable rest. When apply_fn's output carries those `features`, the sampler keeps
    # them and features_fn is not called. None = apply_fn on the tokens.
    features_fn: Callable | None = None
    teacher_fn: Callable | None = None


def init_run_state(params, optimizer: optax.GradientTransformation, key: jax.Array, kl_coef: float) -> RunState:
    return RunState(
        train=TrainState(params=params, opt_state=optimizer.init(params)),
        key=key,
        kl_coef=jnp.float32(kl_coef),
        iteration=jnp.int32(0),
        failed=jnp.bool_(False),
        failed_iteration=jnp.int32(-1),
    )


def sample_episodes(policy: Policy, params, prompts: jax.Array, key: jax.Array) -> tuple[jax.Array, Generation]:
    """Sample responses for full-length prompts: tokens [B, P+N] and the `Generation` (response,
    mask, and the model's features at positions 0 … P+N−2 when its output has them)."""
    batch, prompt_len = prompts.shape
    steps = policy.sampling.max_new_tokens
    cache = policy.init_cache(batch, prompt_len + steps)
    prompt_mask = jnp.ones(prompts.shape, bool)
    generation = generate(policy.apply_fn, params, prompts, prompt_mask, key, policy.sampling, cache)
    return jnp.concatenate([prompts, generation.tokens], axis=1), generation


def rollout(policy: Policy, params, prompts: jax.Array, key: jax.Array):
    """Sample responses for full-length prompts; returns (tokens [B, P+N], response, mask)."""
    tokens, generation = sample_episodes(policy, params, prompts, key)
    return tokens, generation.tokens, generation.mask


def teacher_inputs(policy: Policy, tokens: jax.Array, generation: Generation):
    """What the teacher-forced passes read: the frozen trunk's features (the sampler's own when it
    kept them, one trunk pass fewer), or None for the tokens themselves."""
    if policy.features_fn is None:
        return None
    features = policy.features_fn(tokens) if generation.features is None else generation.features
    return jax.lax.stop_gradient(features)


def per_token_rewards(scores: jax.Array, kl: jax.Array, mask: jax.Array, kl_coef: jax.Array) -> jax.Array:
    """r_t = −β·KL_t on valid tokens, plus the score at the last valid token. [B, N]."""
    last = jnp.maximum(mask.sum(axis=1) - 1, 0)
    rewards = -kl_coef * kl * mask
    return rewards.at[jnp.arange(scores.shape[0]), last].add(scores)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves))


def sample_prompt_indices(key: jax.Array, num_prompts: int, batch: int, group_size: int) -> jax.Array:
    """int32[batch]: batch / group_size training prompts drawn with replacement, each repeated
    group_size times in a row (a group: the responses of one prompt are contiguous)."""
    index = jax.random.randint(key, (batch // group_size,), 0, num_prompts)
    return index if group_size == 1 else jnp.repeat(index, group_size)


def ppo_iteration(
    state: RunState,
    data: RunData,
    reference_params,
    policy: Policy,
    config: PPOConfig,
    algorithm: AlgorithmConfig | None = None,
) -> tuple[RunState, dict]:
    """One iteration of the configured algorithm (PPO when `algorithm` is None; GRPO or RLOO:
    docs/algorithms.md). `reference_params` may be None when no KL penalty is configured
    (`rlbias_jax.config.reference_needed`)."""
    algorithm = algorithm or AlgorithmConfig()
    key, data_key, sample_key, update_key = jax.random.split(state.key, 4)
    params = state.train.params
    batch = config.episodes_per_iteration  # responses: every algorithm spends the same sampling per iteration

    # COLLECT EPISODES (with replacement from the fixed training set; each prompt G times)
    index = sample_prompt_indices(data_key, data.prompts.shape[0], batch, algorithm.samples_per_prompt())
    prompts, labels = data.prompts[index], data.labels[index]
    tokens, generation = sample_episodes(policy, params, prompts, sample_key)
    response, mask = generation.tokens, generation.mask
    scores = policy.score_fn(response, mask, labels, prompts)

    # TEACHER-FORCED OLD LOG-PROBS AND VALUES (first epoch ratio is exactly 1)
    inputs = teacher_inputs(policy, tokens, generation)
    teacher_fn = policy.apply_fn if policy.teacher_fn is None else policy.teacher_fn
    # the sampler's distribution: the same temperature and EOS suppression
    eos_rule = (policy.sampling.eos_id, policy.sampling.min_new_tokens)
    logprobs, values, _ = response_statistics(teacher_fn, params, tokens, config.response_len, config.temperature, inputs, *eos_rule)
    loss_side_kl = algorithm.critic_free and algorithm.kl_coef > 0
    ref_logprobs = None
    if config.kl_coef > 0 or loss_side_kl:
        ref_logprobs, _, _ = response_statistics(teacher_fn, reference_params, tokens, config.response_len, config.temperature,
                                                 inputs, *eos_rule)
    if config.kl_coef > 0:
        kl = kl_per_token(logprobs, ref_logprobs, config.kl_estimator) * mask
    else:
        kl = jnp.zeros_like(logprobs)
    values = values * mask

    # ADVANTAGES
    if algorithm.critic_free:
        episodes = critic_free_episodes(tokens, mask, logprobs, scores, kl, state.kl_coef, algorithm, inputs,
                                        ref_logprobs if loss_side_kl else None)
        loss_fn = functools.partial(critic_free_loss, algorithm=algorithm)
    else:
        rewards = per_token_rewards(scores, kl, mask, state.kl_coef)
        advantages = jax.vmap(masked_gae, in_axes=(0, 0, 0, None, None))(rewards, values, mask, config.gamma, config.gae_lambda)
        returns = advantages + values
        if config.normalize_advantages:
            advantages = whiten(advantages, mask)
        episodes = Episodes(tokens=tokens, response_mask=mask, logprobs=logprobs, values=values, advantages=advantages,
                            returns=returns, inputs=inputs)
        loss_fn = ppo_loss
    returns = episodes.returns

    # UPDATE
    new_train, stats = ppo_update(state.train, episodes, update_key, teacher_fn, policy.optimizer, config, *eos_rule,
                                  loss_fn=loss_fn)
    mean_kl = (kl * mask).sum(axis=1).mean()
    if loss_side_kl:
        # log exactly the KL that is penalised: the loss's k3, summed over the response
        stats["objective/kl_loss"] = (loss_side_kl_per_token(logprobs, ref_logprobs, mask) * mask).sum(axis=1).mean()
    kl_coef = state.kl_coef
    if config.adaptive_kl and config.kl_coef > 0:
        kl_coef = adaptive_kl_update(kl_coef, mean_kl, config.kl_target, config.kl_horizon, batch)

    # FAULT ISOLATION: a non-finite loss or parameter freezes this run, not the batch
    healthy = jnp.isfinite(stats["loss/total"]) & _all_finite(new_train.params)
    newly_failed = ~state.failed & ~healthy
    keep_old = state.failed | newly_failed
    train = jax.tree.map(lambda old, new: jnp.where(keep_old, old, new), state.train, new_train)
    new_state = RunState(
        train=train,
        key=key,
        kl_coef=jnp.where(keep_old, state.kl_coef, kl_coef),
        iteration=state.iteration + 1,
        failed=state.failed | newly_failed,
        failed_iteration=jnp.where(newly_failed, state.iteration, state.failed_iteration),
    )
    stats.update({
        "env/reward_mean": scores.mean(),
        "env/reward_std": scores.std(),
        # by label: at s-only rate 0 these are the both (1) and neither (0) partitions
        "env/reward_mean_label1": masked_mean(scores, labels == 1),
        "env/reward_mean_label0": masked_mean(scores, labels == 0),
        "objective/kl": mean_kl,
        "objective/kl_coef": state.kl_coef,
        "returns/mean": masked_mean(returns, mask),
        "response/length": mask.sum(axis=1).mean(),
    })
    return new_state, stats


def critic_free_episodes(tokens, mask, logprobs, scores, kl, kl_coef, algorithm: AlgorithmConfig, inputs, ref_logprobs) -> Episodes:
    """GRPO/RLOO episodes: the group advantage of each response's reward (the score minus
    β·Σ_t KL_t when ppo.kl_coef > 0) on every valid token; returns = that reward, values 0."""
    rewards = scores - kl_coef * (kl * mask).sum(axis=1)
    advantages = sequence_advantages(rewards, algorithm)
    as_tokens = lambda per_response: per_response[:, None] * mask  # noqa: E731
    return Episodes(tokens=tokens, response_mask=mask, logprobs=logprobs, values=jnp.zeros_like(logprobs),
                    advantages=as_tokens(advantages), returns=as_tokens(rewards), inputs=inputs, ref_logprobs=ref_logprobs)


def partition_scores(policy: Policy, params, prompts: jax.Array, labels: jax.Array, key: jax.Array, greedy: bool) -> jax.Array:
    """The policy's score on every prompt of one test partition (float32[n])."""
    decoding = dataclasses.replace(policy, sampling=dataclasses.replace(policy.sampling, greedy=greedy))
    _, generation = sample_episodes(decoding, params, prompts, key)
    return policy.score_fn(generation.tokens, generation.mask, labels, prompts)
