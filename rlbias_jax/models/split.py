"""A causal LM cut in two at a block boundary: a frozen *trunk* (embeddings and the lower
blocks) and a trainable *top* (the upper blocks, the final norm, the output head and a value
head), for fine-tuning only the top blocks of a large pretrained model.

Teacher-forced passes then run the trunk once per batch of episodes and the top as often
as needed (old log-probs, reference, every PPO minibatch), and the output head — a
vocabulary-sized matmul — only at the positions whose logits are used (the last
`head_positions`). Numerically the same computation as `PolicyValueModel(lm)` for any
`CausalLM` (GPT2, Llama, GPTNeoX; tests/test_split.py checks it), through the family's own
`block`, `final_norm`, `embed_from_params` and `logits_from_params`.
"""

from __future__ import annotations

from collections.abc import Iterable

import flax.struct
import jax
import jax.numpy as jnp

from rlbias_jax.models.decoder import CausalLM
from rlbias_jax.models.kv_cache import attention_bias
from rlbias_jax.models.layers import DTYPES


@flax.struct.dataclass
class TopOutput:
    logits: jax.Array  # [B, T, V]; zero except at the last `head_positions` positions but the final one
    values: jax.Array  # [B, T]


def _apply_blocks(module: CausalLM, lm_params: dict, x, positions, allowed, layers: Iterable[int]) -> jax.Array:
    """Blocks `layers` of `module` in order over x float32[B, T, D], without a cache."""
    for layer in layers:
        block = module.block(layer)
        x, _ = block.apply({"params": lm_params[block.name]}, x, positions, allowed, None)
    return x


def _full_sequence_inputs(batch: int, length: int) -> tuple[jax.Array, jax.Array]:
    """positions int32[B, T] and the causal predicate bool[1, 1, T, T] of full, unpadded sequences."""
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    return positions, attention_bias(length, length, 0, None)


def trunk(module: CausalLM, lm_params: dict, tokens: jax.Array, first_trainable: int) -> jax.Array:
    """Hidden states float32[B, T, D] entering block `first_trainable` (full, unpadded sequences)."""
    if not isinstance(module, CausalLM):
        raise TypeError(f"trainable_layers > 0 needs a CausalLM (GPT2, Llama, GPTNeoX), not {type(module).__name__}")
    batch, length = tokens.shape
    positions, allowed = _full_sequence_inputs(batch, length)
    x = module.embed_from_params(lm_params, tokens, positions)
    return _apply_blocks(module, lm_params, x, positions, allowed, range(first_trainable))


def top(module: CausalLM, lm_params: dict, value_head: dict, hidden: jax.Array, first_trainable: int,
        head_positions: int) -> TopOutput:
    """The rest of the model from `trunk`'s output hidden float32[B, T, D]: logits at the last
    `head_positions` positions except the final one (the positions that emit a response of that
    many tokens), values everywhere. value_head: {"kernel": [D, 1], "bias": [1]}."""
    config = module.config
    batch, length, _ = hidden.shape
    positions, allowed = _full_sequence_inputs(batch, length)
    x = _apply_blocks(module, lm_params, hidden, positions, allowed, range(first_trainable, config.n_layer))
    norm = module.final_norm()
    final = norm.apply({"params": lm_params[norm.name]}, x)
    values = (final.astype(jnp.float32) @ value_head["kernel"] + value_head["bias"])[..., 0]
    used = final[:, length - 1 - head_positions : length - 1].astype(DTYPES[config.dtype])
    logits = module.logits_from_params(lm_params, used).astype(jnp.float32)
    vocab = logits.shape[-1]
    padded = jnp.concatenate([jnp.zeros((batch, length - 1 - head_positions, vocab), jnp.float32), logits,
                              jnp.zeros((batch, 1, vocab), jnp.float32)], axis=1)
    return TopOutput(logits=padded, values=values)
