"""A fixed-size key/value cache shared by every causal LM in `rlbias_jax.models`.

The cache is an explicit pytree passed into and returned from the model's
`__call__`, so generation stays a pure function (and vmaps over runs).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
    """Keys/values for all layers.

    keys, values: [n_layer, batch, max_len, n_kv_head, head_dim]
    index: int32[] — the next slot to write (tokens already cached).
    """

    keys: jax.Array
    values: jax.Array
    index: jax.Array

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]


def init_cache(n_layer: int, batch: int, max_len: int, n_kv_head: int, head_dim: int, dtype=jnp.float32) -> KVCache:
    shape = (n_layer, batch, max_len, n_kv_head, head_dim)
    return KVCache(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype), index=jnp.zeros((), jnp.int32))


def attention_bias(
    query_len: int,
    key_len: int,
    query_offset: jax.Array,
    key_mask: jax.Array | None,
) -> jax.Array:
    """Additive-mask predicate: bool[batch or 1, 1, query_len, key_len].

    A query at absolute slot `query_offset + i` attends to key slots `j <= query_offset + i`
    whose `key_mask[b, j]` is true (left padding and unused cache slots are false).
    """
    query_slots = query_offset + jnp.arange(query_len)
    key_slots = jnp.arange(key_len)
    allowed = key_slots[None, :] <= query_slots[:, None]
    allowed = allowed[None, None, :, :]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].astype(bool)
    return allowed


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, allowed: jax.Array) -> jax.Array:
    """Softmax attention in float32 with grouped-query support.

    query [B, T, H, D]; key, value [B, S, Hkv, D] with H % Hkv == 0; allowed bool[B|1, 1, T, S].
    Returns [B, T, H, D] in the query dtype.
    """
    batch, query_len, n_head, head_dim = query.shape
    n_kv_head = key.shape[2]
    group = n_head // n_kv_head
    if group == 1:
        # plain multi-head attention: 4-D contractions need fewer layout copies on XLA:CPU (≈3 % of a PPO step)
        scores = jnp.einsum("bthd,bshd->bhts", query, key, preferred_element_type=jnp.float32)
        scores = jnp.where(allowed, scores / jnp.sqrt(jnp.float32(head_dim)), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
        return jnp.einsum("bhts,bshd->bthd", weights, value)
    query = query.reshape(batch, query_len, n_kv_head, group, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", query, key, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    mask = allowed[:, :, None, :, :]  # [B|1, 1, 1, T, S]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, value)
    return out.reshape(batch, query_len, n_head, head_dim)


def update_layer(cache_keys: jax.Array, cache_values: jax.Array, index: jax.Array, new_keys: jax.Array, new_values: jax.Array):
    """Write [B, T, Hkv, D] new keys/values at slot `index` of one layer's [B, S, Hkv, D] buffers."""
    start = (0, index, 0, 0)
    cache_keys = jax.lax.dynamic_update_slice(cache_keys, new_keys.astype(cache_keys.dtype), start)
    cache_values = jax.lax.dynamic_update_slice(cache_values, new_values.astype(cache_values.dtype), start)
    return cache_keys, cache_values


def cached_keys_values(layer_cache, key: jax.Array, value: jax.Array):
    """The keys/values one attention layer attends over, and its updated layer cache.

    Without a cache (layer_cache None): the new key, value [B, T, Hkv, D] themselves and None.
    With one, layer_cache = (keys, values [B, S, Hkv, D], index): the buffers with the new
    keys/values written at `index`, returned both to attend over and as the layer's cache.
    """
    if layer_cache is None:
        return key, value, None
    cache_keys, cache_values, index = layer_cache
    cache_keys, cache_values = update_layer(cache_keys, cache_values, index, key, value)
    return cache_keys, cache_values, (cache_keys, cache_values)
