"""Critic-free RL for language models: GRPO and RLOO (docs/algorithms.md).

Each prompt is sampled G times; the G responses of one prompt form a *group*, laid out
contiguously in the batch (prompt 0's G responses, then prompt 1's, ...), and their
rewards are each other's baseline, so no value head is needed.

- GRPO (Shao et al. 2024, DeepSeekMath, "outcome supervision"): A_i = (r_i − mean(r)) /
  (std(r) + eps) within the group, std with Bessel's correction and eps = 1e-4 (TRL's
  GRPOTrainer; DeepSeekMath does not give them), or r_i − mean(r) without the division.
- RLOO (Kool et al. 2019; Ahmadian et al. 2024): A_i = r_i − (Σ_{j≠i} r_j) / (G − 1),
  the mean reward of the *other* responses of the prompt.

Every response token carries its sequence's advantage. The loss averages over a
response's valid tokens, then over responses (DeepSeekMath eq. 3), and adds β times
the k3 estimate of KL(π ‖ π_ref) per token (`rl.kl.kl_per_token`) and minus the
entropy bonus.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from rlbias_jax.config import AlgorithmConfig, PPOConfig
from rlbias_jax.rl.kl import kl_per_token
from rlbias_jax.rl.ppo import Episodes, importance_ratio, masked_mean, ratio_statistics, response_statistics

GRPO_STD_EPS = 1e-4  # added to the group's std (TRL's GRPOTrainer); keeps a group of equal rewards at A = 0


def group_normalised_advantages(rewards: jax.Array, group_size: int, normalisation: str = "std") -> jax.Array:
    """GRPO advantages of float32[B] rewards in contiguous groups of `group_size` (B = n·G).

    "std": (r_i − mean_g) / (std_g + 1e-4) with std_g = sqrt(Σ (r_j − mean_g)² / (G − 1));
    "none": r_i − mean_g. Returns float32[B]."""
    chex.assert_rank(rewards, 1)
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if normalisation == "std":
        std = jnp.sqrt((centred**2).sum(axis=1, keepdims=True) / (group_size - 1))
        centred = centred / (std + GRPO_STD_EPS)
    elif normalisation != "none":
        raise ValueError(f"unknown normalisation {normalisation!r}")
    return centred.reshape(-1)


def leave_one_out_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """RLOO advantages of float32[B] rewards in contiguous groups: r_i − Σ_{j≠i} r_j / (G − 1). float32[B]."""
    chex.assert_rank(rewards, 1)
    groups = rewards.reshape(-1, group_size)
    others = (groups.sum(axis=1, keepdims=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def sequence_advantages(rewards: jax.Array, algorithm: AlgorithmConfig) -> jax.Array:
    """The algorithm's advantage of every response (float32[B]) from its reward."""
    group_size = algorithm.samples_per_prompt()
    if algorithm.name == "grpo":
        return group_normalised_advantages(rewards, group_size, algorithm.normalisation)
    if algorithm.name == "rloo":
        return leave_one_out_advantages(rewards, group_size)
    raise ValueError(f"{algorithm.name!r} is not a critic-free algorithm")


def sequence_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over each response's valid tokens, then over responses ([B, N] -> []); an empty response counts 0."""
    mask = mask.astype(values.dtype)
    per_response = (values * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
    return per_response.mean()


def policy_objective(ratio: jax.Array, advantages: jax.Array, clip_eps: float, objective: str) -> jax.Array:
    """Per-token policy loss: "clipped" −min(ρA, clip(ρ, 1 ± ε)A); "reinforce" −ρA (unclipped)."""
    if objective == "clipped":
        return jnp.maximum(-advantages * ratio, -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps))
    if objective == "reinforce":
        return -advantages * ratio
    raise ValueError(f"unknown objective {objective!r}")


def loss_side_kl_per_token(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """k3 estimate of KL(π ‖ π_ref) per response token, [B, N]; 0 where `mask` is False (the
    reference's log-prob is replaced by the policy's there, so nothing overflows)."""
    return kl_per_token(logprobs, jnp.where(mask, ref_logprobs, logprobs), "k3")


def critic_free_loss(params, apply_fn, batch: Episodes, config: PPOConfig, eos_id: int | None = None, min_new_tokens: int = 0,
                     *, algorithm: AlgorithmConfig):
    """GRPO/RLOO loss of a minibatch: the policy objective on the group advantages
    (`batch.advantages`, [B, N], the sequence's value on every token) + β·k3 KL to
    `batch.ref_logprobs` − entropy bonus, each a sequence mean (`sequence_mean`).

    The same signature as `ppo.ppo_loss` (with `algorithm` bound), so `ppo.ppo_update` runs both."""
    response_len = batch.response_mask.shape[1]
    logprobs, _, entropy = response_statistics(apply_fn, params, batch.tokens, response_len, config.temperature, batch.inputs,
                                               eos_id, min_new_tokens)
    mask = batch.response_mask
    log_ratio, ratio = importance_ratio(logprobs, batch.logprobs, mask)
    policy_loss = sequence_mean(policy_objective(ratio, batch.advantages, config.clip_eps, algorithm.objective), mask)
    if algorithm.kl_coef > 0:
        kl_loss = sequence_mean(loss_side_kl_per_token(logprobs, batch.ref_logprobs, mask), mask)
    else:
        kl_loss = jnp.zeros(())
    mean_entropy = masked_mean(entropy, mask)
    loss = policy_loss + algorithm.kl_coef * kl_loss - config.entropy_coef * mean_entropy
    stats = {
        "loss/policy": policy_loss,
        "loss/kl": kl_loss,
        "loss/total": loss,
        "policy/entropy": mean_entropy,
        **ratio_statistics(log_ratio, ratio, batch.advantages, config.clip_eps, mask),
    }
    return loss, stats
