"""GPT-NeoX (Pythia) in Flax (Hugging Face `GPTNeoXForCausalLM` semantics).

LayerNorm with biases, a fused per-head-interleaved q/k/v projection, rotary
embeddings on the first `rotary_pct` of each head, parallel (or sequential)
residual, exact GELU and an untied `embed_out` head.

Parameter names follow the Hugging Face checkpoint with the `gpt_neox.` prefix
dropped (`embed_in`, `layers_{i}/{input_layernorm, post_attention_layernorm,
attention/{query_key_value, dense}, mlp/{dense_h_to_4h, dense_4h_to_h}}`,
`final_layer_norm`, `embed_out`); Dense kernels are HF's Linear weight transposed.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax.models.gpt2 import DTYPES, LMOutput
from rlbias_jax.models.decoder import positions_and_allowed, run_blocks
from rlbias_jax.models.kv_cache import KVCache, cached_keys_values, dot_product_attention, init_cache
from rlbias_jax.models.llama import apply_rope


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig:
    vocab_size: int
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    ff_dim: int = 1024
    max_len: int = 2048
    rotary_pct: float = 0.25
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True
    gelu_approximate: bool = False  # Pythia uses exact GELU
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    def init_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        return init_cache(self.n_layer, batch, max_len or self.max_len, self.n_head, self.head_dim, DTYPES[self.dtype])

    def inverse_frequencies(self) -> np.ndarray:
        dim = self.rotary_dim
        exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
        return (1.0 / (np.float32(self.rope_theta) ** exponents)).astype(np.float32)

    def num_params(self) -> int:
        d, f, L = self.d_model, self.ff_dim, self.n_layer
        per_layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + L * per_layer + 2 * d + head


def _dense(features: int, config: GPTNeoXConfig, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=DTYPES[config.dtype],
        param_dtype=DTYPES[config.param_dtype],
        kernel_init=nn.initializers.normal(0.02),
        name=name,
    )


def _layer_norm(config: GPTNeoXConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=DTYPES[config.param_dtype], name=name)


class GPTNeoXAttention(nn.Module):
    config: GPTNeoXConfig

    @nn.compact
    def __call__(self, x, positions, allowed, layer_cache):
        config = self.config
        batch, length, _ = x.shape
        qkv = _dense(3 * config.d_model, config, "query_key_value", config.attention_bias)(x)
        # HF lays the fused output out per head: [head, (q | k | v), head_dim]
        qkv = qkv.reshape(batch, length, config.n_head, 3 * config.head_dim)
        query, key, value = jnp.split(qkv, 3, axis=-1)
        inv_freq = config.inverse_frequencies()
        query, key = apply_rope(query, positions, inv_freq), apply_rope(key, positions, inv_freq)
        key, value, layer_cache = cached_keys_values(layer_cache, key, value)
        out = dot_product_attention(query, key, value, allowed).reshape(batch, length, config.d_model)
        return _dense(config.d_model, config, "dense", config.attention_bias)(out), layer_cache


class GPTNeoXMLP(nn.Module):
    config: GPTNeoXConfig

    @nn.compact
    def __call__(self, x):
        hidden = _dense(self.config.ff_dim, self.config, "dense_h_to_4h")(x)
        hidden = nn.gelu(hidden, approximate=self.config.gelu_approximate)
        return _dense(self.config.d_model, self.config, "dense_4h_to_h")(hidden)


class GPTNeoXBlock(nn.Module):
    config: GPTNeoXConfig

    @nn.compact
    def __call__(self, x, positions, allowed, layer_cache):
        config = self.config
        dtype = DTYPES[config.dtype]
        attn_out, layer_cache = GPTNeoXAttention(config, name="attention")(
            _layer_norm(config, "input_layernorm")(x).astype(dtype), positions, allowed, layer_cache
        )
        attn_out = attn_out.astype(x.dtype)
        post_norm = _layer_norm(config, "post_attention_layernorm")
        mlp = GPTNeoXMLP(config, name="mlp")
        if config.use_parallel_residual:
            return x + attn_out + mlp(post_norm(x).astype(dtype)).astype(x.dtype), layer_cache
        x = x + attn_out
        return x + mlp(post_norm(x).astype(dtype)).astype(x.dtype), layer_cache


class GPTNeoX(nn.Module):
    """Same call signature and output as `GPT2` and `Llama`."""

    config: GPTNeoXConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        return_layer_hidden: bool = False,
    ) -> LMOutput:
        config = self.config
        positions, allowed = positions_and_allowed(tokens, positions, attention_mask, cache)
        embed = nn.Embed(config.vocab_size, config.d_model, embedding_init=nn.initializers.normal(0.02),
                         param_dtype=DTYPES[config.param_dtype], name="embed_in")
        x = embed(tokens).astype(jnp.float32)
        blocks = [GPTNeoXBlock(config, name=f"layers_{layer}") for layer in range(config.n_layer)]
        x, layer_hidden, new_cache = run_blocks(blocks, x, (positions, allowed), cache)
        hidden = _layer_norm(config, "final_layer_norm")(x)
        compute_hidden = hidden.astype(DTYPES[config.dtype])
        if config.tie_word_embeddings:
            logits = embed.attend(compute_hidden)
        else:
            logits = _dense(config.vocab_size, config, "embed_out", use_bias=False)(compute_hidden)
        return LMOutput(
            logits=logits.astype(jnp.float32),
            hidden=hidden,
            cache=new_cache,
            layer_hidden=layer_hidden if return_layer_hidden else None,
        )
