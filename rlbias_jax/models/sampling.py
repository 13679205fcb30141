"""One KV-cache sampler for every causal LM of the package.

`generate` prefills the (left-padded) prompt once, then samples `max_new_tokens`
tokens in a `lax.scan`, one cached forward step each (none after the last token). Each row has its own PRNG
stream (`fold_in(row_key, step)`), so a row's sample does not depend on the batch
it is in. After a row emits EOS it emits PAD and its mask is false. With
`min_new_tokens = m > 0`, EOS cannot be sampled as one of the first m new tokens
(`suppress_early_eos`; the teacher-forced log-probs of PPO apply the same mask).

`apply_fn(params, tokens, positions, attention_mask, cache)` must return an
object with `.logits` [B, T, V] and `.cache` (LMOutput and PolicyOutput both do).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from rlbias_jax.models.kv_cache import KVCache

ApplyFn = Callable[..., object]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1 = no nucleus filter
    greedy: bool = False
    eos_id: int | None = None
    pad_id: int = 0
    min_new_tokens: int = 0  # no EOS among the first min_new_tokens new tokens (0 = no minimum)


@flax.struct.dataclass
class Generation:
    tokens: jax.Array  # int32[B, N] (PAD after EOS)
    mask: jax.Array  # bool[B, N]: true up to and including the first EOS
    # float[B, P + N − 1, ...]: the model's `features` output at every position it ran (the prompt,
    # then every new token but the last), when its output has them; else None
    features: jax.Array | None = None


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Top-k then nucleus (top-p) filtering of [..., V] logits; removed entries get -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        cutoff_index = jnp.sum(mass_before < top_p, axis=-1, keepdims=True) - 1
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def suppress_early_eos(logits: jax.Array, new_token_index, min_new_tokens: int, eos_id: int | None) -> jax.Array:
    """EOS gets the lowest finite logit for new tokens with index < min_new_tokens.

    logits [..., V] of the new tokens whose 0-based indices `new_token_index` broadcast
    against logits.shape[:-1]. Finite, so that a log-softmax and its entropy stay finite;
    exp of it underflows to exactly 0, so EOS has probability 0. Identity when
    min_new_tokens = 0 or there is no EOS.
    """
    if min_new_tokens <= 0 or eos_id is None:
        return logits
    early = jnp.asarray(new_token_index) < min_new_tokens
    return logits.at[..., eos_id].set(jnp.where(early, jnp.finfo(logits.dtype).min, logits[..., eos_id]))


def choose_tokens(logits: jax.Array, row_keys: jax.Array, config: SamplingConfig) -> jax.Array:
    """logits float32[B, V], row_keys [B] keys -> int32[B]."""
    if config.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / config.temperature, config.top_k, config.top_p)
    return jax.vmap(jax.random.categorical)(row_keys, logits).astype(jnp.int32)


def prompt_positions(prompt_mask: jax.Array) -> jax.Array:
    """Positions 0, 1, ... over the valid (left-padded) prompt tokens; 0 on padding."""
    return jnp.maximum(jnp.cumsum(prompt_mask.astype(jnp.int32), axis=1) - 1, 0)


def _features(out) -> jax.Array | None:
    """The model output's per-position `features` (e.g. a frozen trunk's hidden states), if any."""
    return getattr(out, "features", None)


def generate(
    apply_fn: ApplyFn,
    params,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    config: SamplingConfig,
    cache: KVCache,
) -> Generation:
    """Sample continuations of left-padded prompts int32[B, P] (mask bool[B, P]).

    `cache` is an empty cache with max_len >= P + max_new_tokens.
    """
    batch, prompt_len = prompt.shape
    steps = config.max_new_tokens
    key_mask = jnp.zeros((batch, cache.max_len), bool)
    key_mask = key_mask.at[:, :prompt_len].set(prompt_mask.astype(bool))
    key_mask = key_mask.at[:, prompt_len : prompt_len + steps].set(True)
    positions = prompt_positions(prompt_mask)
    out = apply_fn(params, prompt, positions, key_mask, cache)
    row_keys = jax.random.split(key, batch)

    @flax.struct.dataclass
    class Carry:
        cache: KVCache
        logits: jax.Array  # [B, V] next-token logits
        position: jax.Array  # [B] position of the next token
        done: jax.Array  # [B] bool: EOS already emitted

    def choose(carry: Carry, step_index):
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step_index)
        logits = suppress_early_eos(carry.logits, step_index, config.min_new_tokens, config.eos_id)
        token = choose_tokens(logits, step_keys, config)
        valid = ~carry.done
        token = jnp.where(valid, token, config.pad_id)
        done = carry.done
        if config.eos_id is not None:
            done = done | (token == config.eos_id)
        return token, valid, done

    def step(carry: Carry, step_index):
        token, valid, done = choose(carry, step_index)
        out = apply_fn(params, token[:, None], carry.position[:, None], key_mask, carry.cache)
        next_carry = Carry(cache=out.cache, logits=out.logits[:, -1], position=carry.position + 1, done=done)
        return next_carry, (token, valid, _features(out))

    initial = Carry(
        cache=out.cache,
        logits=out.logits[:, -1],
        position=positions[:, -1] + 1,
        done=jnp.zeros((batch,), bool),
    )
    # the last token needs no forward pass after it
    final, (tokens, mask, step_features) = jax.lax.scan(step, initial, jnp.arange(steps - 1))
    last_token, last_valid, _ = choose(final, steps - 1)
    tokens = jnp.concatenate([tokens.T, last_token[:, None]], axis=1)
    mask = jnp.concatenate([mask.T, last_valid[:, None]], axis=1)
    features = _features(out)
    if features is not None:  # [B, P, ...] from the prefill, then [steps − 1, B, 1, ...] from the scan
        features = jnp.concatenate([features, jnp.moveaxis(step_features[:, :, 0], 0, 1)], axis=1)
    return Generation(tokens=tokens, mask=mask, features=features)


def generate_reference(apply_fn: ApplyFn, params, prompt, prompt_mask, key, config: SamplingConfig) -> Generation:
    """Slow reference without a cache: a full forward pass over the growing sequence per step.
    Same PRNG streams as `generate`, so both must agree token for token."""
    batch, _ = prompt.shape
    row_keys = jax.random.split(key, batch)
    tokens, mask = prompt, prompt_mask.astype(bool)
    done = jnp.zeros((batch,), bool)
    new_tokens, new_mask = [], []
    for step_index in range(config.max_new_tokens):
        out = apply_fn(params, tokens, prompt_positions(mask), mask, None)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step_index)
        logits = suppress_early_eos(out.logits[:, -1], step_index, config.min_new_tokens, config.eos_id)
        token = choose_tokens(logits, step_keys, config)
        valid = ~done
        token = jnp.where(valid, token, config.pad_id)
        if config.eos_id is not None:
            done = done | (token == config.eos_id)
        new_tokens.append(token)
        new_mask.append(valid)
        tokens = jnp.concatenate([tokens, token[:, None]], axis=1)
        mask = jnp.concatenate([mask, jnp.ones((batch, 1), bool)], axis=1)
    return Generation(tokens=jnp.stack(new_tokens, 1), mask=jnp.stack(new_mask, 1))
