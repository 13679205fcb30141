"""What every causal LM in `rlbias_jax.models` shares: the output type, default positions and
the attention predicate, running the stack of decoder blocks with an optional KV cache, and
`CausalLM`, the base class holding the forward pass and the interface `models/split.py` uses.

A family (GPT2, Llama, GPTNeoX) subclasses `CausalLM` with a `config` field and supplies its
embeddings, blocks, final norm and head under its own checkpoint's parameter names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rlbias_jax.models.kv_cache import KVCache, attention_bias, init_cache
from rlbias_jax.models.layers import DTYPES, dense, matmul_f32_out


@flax.struct.dataclass
class LMOutput:
    """What every causal LM in this package returns.

    logits [B, T, V] (float32); hidden [B, T, D] final (post-norm) hidden states;
    cache: the updated KVCache or None; layer_hidden: tuple of [B, T, D] per layer
    (embeddings first, n_layer + 1 entries) when requested, else None.
    """

    logits: jax.Array
    hidden: jax.Array
    cache: KVCache | None = None
    layer_hidden: tuple | None = None


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
    positions: jax.Array,
    allowed: jax.Array,
    cache: KVCache | None,
) -> tuple[jax.Array, tuple[jax.Array, ...], KVCache | None]:
    """Run decoder blocks in order over hidden states x [B, T, D].

    Block `layer` is called as `block(x, positions, allowed, layer_cache) -> (x, layer_cache)`,
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
        x, layer_cache = block(x, positions, allowed, layer_cache)
        layer_hidden.append(x)
        if cache is not None:
            new_keys.append(layer_cache[0])
            new_values.append(layer_cache[1])
    if cache is None:
        return x, tuple(layer_hidden), None
    length = x.shape[1]
    new_cache = KVCache(keys=jnp.stack(new_keys), values=jnp.stack(new_values), index=cache.index + length)
    return x, tuple(layer_hidden), new_cache


def token_embedding(num_embeddings: int, config, name: str, stddev: float = 0.02) -> nn.Embed:
    """An embedding table [num_embeddings, config.d_model] initialised N(0, stddev²)."""
    return nn.Embed(num_embeddings, config.d_model, embedding_init=nn.initializers.normal(stddev),
                    param_dtype=DTYPES[config.param_dtype], name=name)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """The fields every family's config has; a family's config adds its own (all with defaults)."""

    vocab_size: int
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    max_len: int = 2048
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"{type(self).__name__}: {field}={getattr(self, field)!r} is not one of {tuple(DTYPES)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def cache_heads(self) -> int:
        """Key/value heads per layer in the KV cache (fewer than n_head under grouped-query attention)."""
        return self.n_head

    def init_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        return init_cache(self.n_layer, batch, max_len or self.max_len, self.cache_heads, self.head_dim, DTYPES[self.dtype])


class CausalLM(nn.Module):
    """A decoder-only LM: tokens int32[B, T], positions int32[B, T], attention_mask bool[B, S]
    over key slots (S = T without a cache, S = cache.max_len with one) -> `LMOutput`.

    The residual stream stays float32; matmuls run in config.dtype. A family subclasses it
    with a `config` field (a `DecoderConfig`) and names its parts as in its checkpoint:
      token_embedding_name: the token embedding table;
      output_head_name: the untied output head, used unless config.tie_word_embeddings
        (None: the family always ties);
      block_module, block_name_prefix: block `layer` is block_module(config, name=prefix + layer),
        called as block(x [B, T, D], positions, allowed, layer_cache) -> (x, layer_cache);
      final_norm_layer, final_norm_name: the final norm is final_norm_layer(config, final_norm_name).
    The embeddings here suit families without position embeddings; GPT-2 overrides them.
    `models/split.py` runs the model in two parts through block, final_norm,
    embed_from_params and logits_from_params (nowrap: callable on an unbound module).
    """

    token_embedding_name = "embed_tokens"
    output_head_name = None

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        return_layer_hidden: bool = False,
        last_logits_only: bool = False,
    ) -> LMOutput:
        """`last_logits_only`: logits [B, 1, V] at the last position only (a sampler reads no others)."""
        config = self.config
        positions, allowed = positions_and_allowed(tokens, positions, attention_mask, cache)
        x, embedding = self.embed_inputs(tokens, positions)
        blocks = [self.block(layer) for layer in range(config.n_layer)]
        x, layer_hidden, new_cache = run_blocks(blocks, x, positions, allowed, cache)
        hidden = self.final_norm()(x)
        head_input = hidden[:, -1:] if last_logits_only else hidden
        logits = self.output_logits(embedding, head_input.astype(DTYPES[config.dtype]))
        return LMOutput(
            logits=logits.astype(jnp.float32),
            hidden=hidden,
            cache=new_cache,
            layer_hidden=layer_hidden if return_layer_hidden else None,
        )

    @nn.nowrap
    def block(self, layer: int) -> nn.Module:
        return self.block_module(self.config, name=f"{self.block_name_prefix}{layer}")

    @nn.nowrap
    def final_norm(self) -> nn.Module:
        return self.final_norm_layer(self.config, self.final_norm_name)

    @nn.nowrap
    def ties_output_head(self) -> bool:
        return self.output_head_name is None or self.config.tie_word_embeddings

    @nn.nowrap
    def embed_inputs(self, tokens: jax.Array, positions: jax.Array) -> tuple[jax.Array, nn.Embed]:
        """float32[B, T, D] input hidden states and the token embedding module (for a tied head)."""
        del positions  # rotary families use positions inside attention
        embedding = token_embedding(self.config.vocab_size, self.config, self.token_embedding_name)
        return embedding(tokens).astype(jnp.float32), embedding

    @nn.nowrap
    def output_logits(self, embedding: nn.Embed, hidden: jax.Array) -> jax.Array:
        """Logits [B, T, V] from final hidden states [B, T, D] in the compute dtype (float32 for bfloat16:
        bf16 operands, float32 accumulation, `layers.matmul_f32_out`)."""
        if self.ties_output_head():
            if hidden.dtype == jnp.bfloat16:
                return matmul_f32_out(hidden, embedding.embedding.T.astype(jnp.bfloat16))
            return embedding.attend(hidden)
        return dense(self.config.vocab_size, self.config, self.output_head_name, use_bias=False)(hidden)

    @nn.nowrap
    def embed_from_params(self, params: dict, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """`embed_inputs` on explicit LM params: float32[B, T, D]."""
        del positions
        return params[self.token_embedding_name]["embedding"][tokens].astype(jnp.float32)

    @nn.nowrap
    def logits_from_params(self, params: dict, hidden: jax.Array) -> jax.Array:
        """`output_logits` on explicit LM params: hidden [B, T, D] -> logits [B, T, V], in hidden's dtype,
        or float32 for bfloat16 hidden (bf16 operands, float32 accumulation: `layers.matmul_f32_out`)."""
        if self.ties_output_head():
            kernel = params[self.token_embedding_name]["embedding"].T
        else:
            kernel = params[self.output_head_name]["kernel"]
        if hidden.dtype == jnp.bfloat16:
            return matmul_f32_out(hidden, kernel.astype(jnp.bfloat16))
        return hidden @ kernel.astype(hidden.dtype)
