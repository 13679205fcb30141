"""A causal LM cut in two at a block boundary: a frozen *trunk* (embeddings and the lower
blocks) and a trainable *top* (the upper blocks, the final norm, the tied output head and
a value head), for fine-tuning only the top blocks of a large pretrained model.

Teacher-forced passes then run the trunk once per batch of episodes and the top as often
as needed (old log-probs, reference, every PPO minibatch), and the output head — a
vocabulary-sized matmul — only at the positions whose logits are used (the last
`head_positions`). Numerically the same computation as `PolicyValueModel(GPT2 | Llama)`
(tests/test_nl_policy.py checks it), reusing the modules' own blocks.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rlbias_jax.models.gpt2 import DTYPES, GPT2, GPT2Block
from rlbias_jax.models.kv_cache import attention_bias
from rlbias_jax.models.llama import Llama, LlamaBlock


@flax.struct.dataclass
class TopOutput:
    logits: jax.Array  # [B, T, V]; zero except at the last `head_positions` positions but the final one
    values: jax.Array  # [B, T]


def _blocks(module, params, x, positions, allowed, layers):
    config = module.config
    for layer in layers:
        if isinstance(module, Llama):
            x, _ = LlamaBlock(config).apply({"params": params[f"layers_{layer}"]}, x, positions, allowed, None)
        else:
            x, _ = GPT2Block(config).apply({"params": params[f"h_{layer}"]}, x, allowed, None)
    return x


def _embedding(module, lm_params) -> jax.Array:
    return lm_params["embed_tokens" if isinstance(module, Llama) else "wte"]["embedding"]


def trunk(module, lm_params: dict, tokens: jax.Array, first_trainable: int) -> jax.Array:
    """Hidden states float32[B, T, D] entering block `first_trainable` (full, unpadded sequences)."""
    if not isinstance(module, (GPT2, Llama)):
        raise TypeError(f"trainable_layers > 0 supports GPT-2 and Llama-family models, not {type(module).__name__}")
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    x = _embedding(module, lm_params)[tokens].astype(jnp.float32)
    if isinstance(module, GPT2):
        x = x + lm_params["wpe"]["embedding"][positions].astype(jnp.float32)
    allowed = attention_bias(length, length, 0, None)
    return _blocks(module, lm_params, x, positions, allowed, range(first_trainable))


def top(module, lm_params: dict, value_head: dict, hidden: jax.Array, first_trainable: int, head_positions: int) -> TopOutput:
    """The rest of the model from `trunk`'s output: logits at the last `head_positions` positions
    except the final one (the positions that emit a response of that many tokens), values everywhere."""
    config = module.config
    batch, length, _ = hidden.shape
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    allowed = attention_bias(length, length, 0, None)
    x = _blocks(module, lm_params, hidden, positions, allowed, range(first_trainable, config.n_layer))
    if isinstance(module, Llama):
        norm = nn.RMSNorm(epsilon=config.rms_norm_eps, dtype=jnp.float32, param_dtype=DTYPES[config.param_dtype])
        final = norm.apply({"params": lm_params["norm"]}, x)
    else:
        norm = nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=DTYPES[config.param_dtype])
        final = norm.apply({"params": lm_params["ln_f"]}, x)
    values = (final.astype(jnp.float32) @ value_head["kernel"] + value_head["bias"])[..., 0]
    used = final[:, length - 1 - head_positions : length - 1].astype(DTYPES[config.dtype])
    if isinstance(module, Llama) and not config.tie_word_embeddings:
        logits = used @ lm_params["lm_head"]["kernel"].astype(used.dtype)
    else:
        logits = used @ _embedding(module, lm_params).T.astype(used.dtype)
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    padded = jnp.concatenate([jnp.zeros((batch, length - 1 - head_positions, vocab), jnp.float32), logits,
                              jnp.zeros((batch, 1, vocab), jnp.float32)], axis=1)
    return TopOutput(logits=padded, values=values)
