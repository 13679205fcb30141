"""Generalised advantage estimation over response tokens (Schulman et al. 2016)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def masked_gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float) -> jax.Array:
    """Advantages for one episode of T response tokens.

        δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t,   A_t = δ_t + γλ·m_{t+1}·A_{t+1},

    with V_T = A_T = 0: the episode ends after its last valid token (EOS or the
    length limit). Masked positions (after EOS) get advantage 0.

    rewards, values float32[T]; mask bool[T] (a prefix of trues) -> float32[T].
    """
    chex.assert_rank([rewards, values, mask], 1)
    chex.assert_equal_shape([rewards, values, mask])
    mask = mask.astype(rewards.dtype)
    next_mask = jnp.concatenate([mask[1:], jnp.zeros((1,), mask.dtype)])
    next_values = jnp.concatenate([values[1:], jnp.zeros((1,), values.dtype)]) * next_mask
    deltas = (rewards + gamma * next_values - values) * mask

    def backward(next_advantage, inputs):
        delta, continues = inputs
        advantage = delta + gamma * lam * continues * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros((), rewards.dtype), (deltas, next_mask), reverse=True)
    return advantages * mask


def whiten(values: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """Normalise to zero mean / unit variance over the masked entries (TRL's `masked_whiten`)."""
    mask = mask.astype(values.dtype)
    count = jnp.maximum(mask.sum(), 1.0)
    mean = (values * mask).sum() / count
    variance = (((values - mean) ** 2) * mask).sum() / count
    whitened = (values - mean) * jax.lax.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
