"""PPO for language models: losses and the epoch × minibatch update (SPEC §4), shared with
the critic-free algorithms (rl.critic_free).

Conventions of TRL's original PPO trainer and lm-human-preferences: every
response token is an action; the value head predicts, at the position that
emits a token, the return from there; tokens after EOS are masked out of every
loss and statistic.
"""

from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlbias_jax.config import PPOConfig
from rlbias_jax.models.sampling import suppress_early_eos


@flax.struct.dataclass
class Episodes:
    """A batch of B episodes with prompt length P and response length N."""

    tokens: jax.Array  # int32[B, P + N]: prompt then response
    response_mask: jax.Array  # bool[B, N]
    logprobs: jax.Array  # float32[B, N]: old policy, teacher-forced
    values: jax.Array  # float32[B, N]: old values
    advantages: jax.Array  # float32[B, N]
    returns: jax.Array  # float32[B, N]
    # What the loss's model reads instead of `tokens` (e.g. cached features of a frozen trunk,
    # [B, P + N, ...]); None = the tokens themselves.
    inputs: object = None
    # The KL reference's log-probs of the response tokens, float32[B, N], for a loss-side KL
    # (GRPO/RLOO, rl.critic_free); None = none.
    ref_logprobs: object = None


@flax.struct.dataclass
class TrainState:
    params: object
    opt_state: object


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm) if config.max_grad_norm > 0 else optax.identity(),
        optax.adam(config.learning_rate, eps=config.adam_eps),
    )


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(values.dtype)
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def response_statistics(apply_fn: Callable, params, tokens: jax.Array, response_len: int, temperature: float, inputs=None,
                        eos_id: int | None = None, min_new_tokens: int = 0):
    """Teacher-forced pass: log-probs of the response tokens, values and entropies, each [B, N].

    The position P−1+i emits response token i, so its logits and value belong to token i.
    `apply_fn` reads `inputs` when given (e.g. cached trunk features), else the tokens; its output
    covers every position, or only the N emitting ones when it says so (`response_only`, e.g.
    `models.split.TopOutput`, which never builds a [B, P + N, V] tensor).
    The distribution is the sampler's: logits / temperature, and EOS suppressed for
    response tokens i < min_new_tokens exactly as `sampling.generate` does, so that the
    old log-probs and the PPO ratio are those of the distribution the tokens came from.
    """
    out = apply_fn(params, tokens if inputs is None else inputs, None, None, None)
    prompt_len = tokens.shape[1] - response_len
    emitting = slice(None) if getattr(out, "response_only", False) else slice(prompt_len - 1, -1)
    logits = out.logits[:, emitting] / temperature
    logits = suppress_early_eos(logits, jnp.arange(response_len), min_new_tokens, eos_id)
    values = out.values[:, emitting]
    log_probs_all = jax.nn.log_softmax(logits, axis=-1)
    response = tokens[:, prompt_len:]
    logprobs = jnp.take_along_axis(log_probs_all, response[..., None], axis=-1)[..., 0]
    entropy = -(jnp.exp(log_probs_all) * log_probs_all).sum(-1)
    return logprobs, values, entropy


def importance_ratio(logprobs: jax.Array, old_logprobs: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log ratio, ratio) of new to old token probabilities, 0 and 1 where `mask` is False.

    Masked before exp: a token after EOS must not overflow the ratio (exp(> 88.7) = inf in float32)."""
    log_ratio = jnp.where(mask, logprobs - old_logprobs, 0.0)
    return log_ratio, jnp.exp(log_ratio)


def ratio_statistics(log_ratio: jax.Array, ratio: jax.Array, advantages: jax.Array, clip_eps: float, mask: jax.Array) -> dict:
    """TRL's statistics of the importance ratio over the valid tokens: approx-KL (½·mean log-ratio²),
    clipfrac (the fraction of tokens whose clipped policy loss −A·clip(ρ, 1 ± ε) exceeds −A·ρ) and the mean ratio."""
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return {
        "policy/approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "policy/clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "val/ratio": masked_mean(ratio, mask),
    }


def ppo_loss(params, apply_fn: Callable, batch: Episodes, config: PPOConfig, eos_id: int | None = None, min_new_tokens: int = 0):
    """Clipped policy loss + (optionally clipped) value loss − entropy bonus, with TRL's statistics.
    `eos_id`, `min_new_tokens`: the sampler's EOS suppression (see `response_statistics`)."""
    response_len = batch.response_mask.shape[1]
    logprobs, values, entropy = response_statistics(apply_fn, params, batch.tokens, response_len, config.temperature, batch.inputs,
                                                    eos_id, min_new_tokens)
    mask = batch.response_mask

    log_ratio, ratio = importance_ratio(logprobs, batch.logprobs, mask)
    policy_losses = -batch.advantages * ratio
    policy_losses_clipped = -batch.advantages * jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    policy_loss = masked_mean(jnp.maximum(policy_losses, policy_losses_clipped), mask)

    value_losses = (values - batch.returns) ** 2
    if config.value_clip_eps > 0:
        values_clipped = batch.values + jnp.clip(values - batch.values, -config.value_clip_eps, config.value_clip_eps)
        value_losses_clipped = (values_clipped - batch.returns) ** 2
        value_clipfrac = masked_mean((value_losses_clipped > value_losses).astype(jnp.float32), mask)
        value_losses = jnp.maximum(value_losses, value_losses_clipped)
    else:
        value_clipfrac = jnp.zeros(())
    value_loss = 0.5 * masked_mean(value_losses, mask)
    mean_entropy = masked_mean(entropy, mask)
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * mean_entropy

    stats = {
        "loss/policy": policy_loss,
        "loss/value": value_loss,
        "loss/total": loss,
        "policy/entropy": mean_entropy,
        **ratio_statistics(log_ratio, ratio, batch.advantages, config.clip_eps, mask),
        "val/clipfrac": value_clipfrac,
        "val/mean": masked_mean(values, mask),
    }
    return loss, stats


def ppo_update(
    state: TrainState,
    episodes: Episodes,
    key: jax.Array,
    apply_fn: Callable,
    optimizer: optax.GradientTransformation,
    config: PPOConfig,
    eos_id: int | None = None,
    min_new_tokens: int = 0,
    loss_fn: Callable = ppo_loss,
) -> tuple[TrainState, dict]:
    """`config.epochs` passes over shuffled minibatches of episodes; statistics averaged.
    `eos_id`, `min_new_tokens`: the sampler's EOS suppression (see `response_statistics`).
    `loss_fn(params, apply_fn, minibatch, config, eos_id, min_new_tokens) -> (loss, stats)`:
    PPO's by default; GRPO and RLOO pass theirs (`rl.critic_free.critic_free_loss`), so every
    algorithm shares the minibatches, epochs, gradient clipping and optimizer."""
    batch_size = episodes.tokens.shape[0]
    n_minibatches = batch_size // config.minibatch_size
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def minibatch_step(train_state: TrainState, minibatch: Episodes):
        (_, stats), grads = grad_fn(train_state.params, apply_fn, minibatch, config, eos_id, min_new_tokens)
        updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        stats["policy/grad_norm"] = optax.tree.norm(grads)
        return TrainState(params=params, opt_state=opt_state), stats

    def epoch_step(train_state: TrainState, epoch_key):
        permutation = jax.random.permutation(epoch_key, batch_size)
        shuffled = jax.tree.map(lambda x: x[permutation].reshape(n_minibatches, config.minibatch_size, *x.shape[1:]), episodes)
        train_state, stats = jax.lax.scan(minibatch_step, train_state, shuffled)
        return train_state, jax.tree.map(jnp.mean, stats)

    state, stats = jax.lax.scan(epoch_step, state, jax.random.split(key, config.epochs))
    return state, jax.tree.map(jnp.mean, stats)
