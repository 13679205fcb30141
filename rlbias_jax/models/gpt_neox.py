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
import jax.numpy as jnp
import numpy as np

from rlbias_jax.models.decoder import CausalLM, DecoderConfig
from rlbias_jax.models.kv_cache import cached_keys_values, dot_product_attention
from rlbias_jax.models.layers import DTYPES, GeluMLP, apply_rope, dense, layer_norm, rotary_inverse_frequencies


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig(DecoderConfig):
    ff_dim: int = 1024
    rotary_pct: float = 0.25
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True
    gelu_approximate: bool = False  # Pythia uses exact GELU
    attention_bias: bool = True
    tie_word_embeddings: bool = False

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    def inverse_frequencies(self) -> np.ndarray:
        """float32[rotary_dim // 2]: rotary frequencies of the first rotary_dim features of each head."""
        return rotary_inverse_frequencies(self.rope_theta, self.rotary_dim)

    def num_params(self) -> int:
        d, f, L = self.d_model, self.ff_dim, self.n_layer
        per_layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + L * per_layer + 2 * d + head


class GPTNeoXAttention(nn.Module):
    """Multi-head attention with a fused, per-head interleaved q/k/v projection and rotary
    positions on the first rotary_dim features of each head: x [B, T, D] -> [B, T, D]."""

    config: GPTNeoXConfig

    @nn.compact
    def __call__(self, x, positions, allowed, layer_cache):
        config = self.config
        batch, length, _ = x.shape
        qkv = dense(3 * config.d_model, config, "query_key_value", config.attention_bias)(x)
        # HF lays the fused output out per head: [head, (q | k | v), head_dim]
        qkv = qkv.astype(DTYPES[config.dtype]).reshape(batch, length, config.n_head, 3 * config.head_dim)
        query, key, value = jnp.split(qkv, 3, axis=-1)
        inv_freq = config.inverse_frequencies()
        query, key = apply_rope(query, positions, inv_freq), apply_rope(key, positions, inv_freq)
        key, value, layer_cache = cached_keys_values(layer_cache, key, value)
        out = dot_product_attention(query, key, value, allowed).reshape(batch, length, config.d_model)
        return dense(config.d_model, config, "dense", config.attention_bias)(out), layer_cache


class GPTNeoXBlock(nn.Module):
    """x [B, T, D] float32 -> x + attention(input_layernorm(x)) + mlp(post_attention_layernorm(x))
    (parallel residual), or the two residual steps in turn when not use_parallel_residual."""

    config: GPTNeoXConfig

    @nn.compact
    def __call__(self, x, positions, allowed, layer_cache):
        config = self.config
        dtype = DTYPES[config.dtype]
        attn_out, layer_cache = GPTNeoXAttention(config, name="attention")(
            layer_norm(config, "input_layernorm")(x).astype(dtype), positions, allowed, layer_cache
        )
        attn_out = attn_out.astype(x.dtype)
        post_norm = layer_norm(config, "post_attention_layernorm")
        mlp = GeluMLP(config, names=("dense_h_to_4h", "dense_4h_to_h"), approximate=config.gelu_approximate, name="mlp")
        if config.use_parallel_residual:
            return x + attn_out + mlp(post_norm(x).astype(dtype)).astype(x.dtype), layer_cache
        x = x + attn_out
        return x + mlp(post_norm(x).astype(dtype)).astype(x.dtype), layer_cache


class GPTNeoX(CausalLM):
    """GPT-NeoX (Pythia): `CausalLM` with partial rotary positions and an untied `embed_out` head by default."""

    config: GPTNeoXConfig
    token_embedding_name, output_head_name = "embed_in", "embed_out"
    block_module, block_name_prefix = GPTNeoXBlock, "layers_"
    final_norm_layer, final_norm_name = staticmethod(layer_norm), "final_layer_norm"
