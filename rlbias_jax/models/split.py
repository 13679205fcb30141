"""A causal LM cut in two at a block boundary: a frozen *trunk* (embeddings and the lower
blocks) and a trainable *top* (the upper blocks, the final norm, the output head and a value
head), for fine-tuning only the top blocks of a large pretrained model.

Teacher-forced passes then run the trunk once per batch of episodes (or take its output from
the sampler, which computes it anyway) and the top as often as needed (old log-probs,
reference, every PPO minibatch). The top's final norm, value head and vocabulary-sized output
matmul run only at the positions whose outputs are used: the last `head_positions` positions
of its input, e.g. the N positions that emit an N-token response. Nothing of size [B, T, V]
is built. Numerically the same computation as `PolicyValueModel(lm)` at those positions for
any `CausalLM` (GPT2, Llama, GPTNeoX; tests/test_split.py checks it), through the family's
own `block`, `final_norm`, `embed_from_params` and `logits_from_params`.
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
    """The top's outputs at its last H = head_positions input positions only."""

    logits: jax.Array  # float32[B, H, V]
    values: jax.Array  # float32[B, H]
    # rl.ppo.response_statistics: these are already the positions that emit the response
    response_only: bool = flax.struct.field(pytree_node=False, default=True)


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
    """The rest of the model from `trunk`'s output hidden float32[B, L, D] (positions 0 … L−1):
    logits and values at the last `head_positions` positions L − H … L − 1 only.

    For a response of N tokens after a P-token prompt, pass the trunk's output at positions
    0 … P + N − 2 (the last token emits nothing) and head_positions = N: output i then belongs
    to response token i. value_head: {"kernel": [D, 1], "bias": [1]}."""
    config = module.config
    batch, length, _ = hidden.shape
    positions, allowed = _full_sequence_inputs(batch, length)
    x = _apply_blocks(module, lm_params, hidden, positions, allowed, range(first_trainable, config.n_layer))
    norm = module.final_norm()
    # the norm, the value head and the output head act per position: only the used ones run
    final = norm.apply({"params": lm_params[norm.name]}, x[:, length - head_positions :])
    values = (final.astype(jnp.float32) @ value_head["kernel"] + value_head["bias"])[..., 0]
    logits = module.logits_from_params(lm_params, final.astype(DTYPES[config.dtype])).astype(jnp.float32)
    return TopOutput(logits=logits, values=values)
