"""Rule-based toy rewards (SPEC §4): jittable functions of one episode.

Token layout of the toy policy: symbols 0..V-1 are digits, V is PAD/EOS, V+1 is UNK.
Both functions are unbatched (one response); callers `vmap`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def ordered_digits_reward(response: jax.Array, mask: jax.Array, label: jax.Array, num_symbols: int) -> jax.Array:
    """Ascending (label 1) / descending (label 0) reward.

    Read the valid digit tokens of the response in order (non-digits such as UNK are
    skipped, tokens after EOS are masked); count the strictly correctly ordered
    adjacent pairs from the first digit up to the first violation; divide by N - 1
    for a response of N tokens. No digits (or one) gives 0.

    response int32[N], mask bool[N], label int32[] -> float32[].
    """
    chex.assert_rank([response, mask, label], [1, 1, 0])
    length = response.shape[0]
    is_digit = mask & (response >= 0) & (response < num_symbols)
    # stable sort brings the digits to the front, in their original order
    order = jnp.argsort(~is_digit, stable=True)
    digits = response[order]
    n_digits = is_digit.sum()
    ascending = digits[1:] > digits[:-1]
    descending = digits[1:] < digits[:-1]
    correct = jnp.where(label == 1, ascending, descending)
    pair_exists = jnp.arange(1, length) < n_digits
    run = jnp.cumprod(correct & pair_exists)
    return run.sum().astype(jnp.float32) / jnp.float32(max(length - 1, 1))


def threshold_reward(response: jax.Array, mask: jax.Array, label: jax.Array, num_symbols: int) -> jax.Array:
    """The one-token variant: 1 if the first response token is a digit in the upper half
    of the symbols iff label = 1 (lower half iff label = 0); otherwise 0."""
    chex.assert_rank([response, mask, label], [1, 1, 0])
    token = response[0]
    is_digit = mask[0] & (token >= 0) & (token < num_symbols)
    upper = token >= (num_symbols + 1) // 2
    return (is_digit & (upper == (label == 1))).astype(jnp.float32)


REWARDS = {"ascending": ordered_digits_reward, "threshold": threshold_reward}


def batch_reward(kind: str, responses: jax.Array, masks: jax.Array, labels: jax.Array, num_symbols: int) -> jax.Array:
    """float32[B] scores for int32[B, N] responses."""
    fn = REWARDS[kind]
    return jax.vmap(fn, in_axes=(0, 0, 0, None))(responses, masks, labels, num_symbols)
