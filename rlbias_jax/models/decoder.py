"""The forward-pass pieces every causal LM in `rlbias_jax.models` shares: default positions
and the attention predicate, and running the stack of decoder blocks with an optional
KV cache. The models keep their own embeddings, blocks, final norm and head, so parameter
names stay those of each Hugging Face checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlbias_jax.models.kv_cache import KVCache, attention_bias


def positions_and_allowed(
    tokens: jax.Array,
    positions: jax.Array | None,
    attention_mask: jax.Array | None,
    cache: KVCache | None,
) -> tuple[jax.Array, jax.Array]:
    """positions int32[B, T] (counting on from the cache's index when not given) and the
    attention predicate bool[B|1, 1, T, S] (S = T without a cache, cache.max_len with one)."""
    batch, length = tokens.shape
    if positions is None:
        offset = 0 if cache is None else cache.index
        positions = jnp.broadcast_to(offset + jnp.arange(length), (batch, length))
    if cache is None:
        allowed = attention_bias(length, length, 0, attention_mask)
    else:
        allowed = attention_bias(length, cache.max_len, cache.index, attention_mask)
    return positions, allowed


def run_blocks(
    blocks: Sequence[nn.Module],
    x: jax.Array,
    block_inputs: tuple,
    cache: KVCache | None,
) -> tuple[jax.Array, tuple[jax.Array, ...], KVCache | None]:
    """Run decoder blocks in order over hidden states x [B, T, D].

    Block `layer` is called as `block(x, *block_inputs, layer_cache) -> (x, layer_cache)`,
    where layer_cache is None without a cache and (keys[layer], values[layer], cache.index)
    with one; a block returns its layer's updated (keys, values).
    Returns the last block's output, the hidden states entering and leaving every block
    (len(blocks) + 1 arrays, the input first) and the cache with every layer written and
    its index advanced by T (None without a cache).
    """
    layer_hidden = [x]
    new_keys, new_values = [], []
    for layer, block in enumerate(blocks):
        layer_cache = None if cache is None else (cache.keys[layer], cache.values[layer], cache.index)
        x, layer_cache = block(x, *block_inputs, layer_cache)
        layer_hidden.append(x)
        if cache is not None:
            new_keys.append(layer_cache[0])
            new_values.append(layer_cache[1])
    if cache is None:
        return x, tuple(layer_hidden), None
    length = x.shape[1]
    new_cache = KVCache(keys=jnp.stack(new_keys), values=jnp.stack(new_values), index=cache.index + length)
    return x, tuple(layer_hidden), new_cache
