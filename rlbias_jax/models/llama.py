"""Llama-family causal LM in Flax (Hugging Face `LlamaForCausalLM` semantics).

RMSNorm, rotary position embeddings (rotate-half layout, `rope_theta`, optional
"linear" or "llama3" frequency scaling), grouped-query attention, SwiGLU MLP and a
tied or untied output head. Optional projection biases cover Qwen2 (q/k/v biased)
and Llama's `attention_bias` / `mlp_bias`. SmolLM2, Llama 2/3, Mistral (without a
sliding window) and Qwen2 checkpoints load into this one module.

Parameter names follow the Hugging Face checkpoint with the `model.` prefix
dropped (`embed_tokens`, `layers_{i}/{input_layernorm, self_attn/{q,k,v,o}_proj,
post_attention_layernorm, mlp/{gate,up,down}_proj}`, `norm`, `lm_head`); Dense
kernels are [in, out], i.e. HF's Linear weight transposed.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import numpy as np

from rlbias_jax.models.decoder import CausalLM, DecoderConfig
from rlbias_jax.models.kv_cache import cached_keys_values, dot_product_attention
from rlbias_jax.models.layers import DTYPES, GatedSiluMLP, apply_rope, dense, rms_norm, rotary_inverse_frequencies

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig(DecoderConfig):
    n_kv_head: int = 4
    ff_dim: int = 704
    head_size: int | None = None  # per-head width; d_model // n_head when None
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default", "linear" or "llama3" (Llama 3.1+ long-context scaling)
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2: biases on q/k/v only
    o_bias: bool = False  # Llama's attention_bias=True biases o_proj too
    mlp_bias: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig: n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"LlamaConfig: rope_type={self.rope_type!r} is not one of {ROPE_TYPES}")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    @property
    def cache_heads(self) -> int:
        return self.n_kv_head

    def inverse_frequencies(self) -> np.ndarray:
        """float32[head_dim // 2] rotary frequencies, computed as HF does (float32 powers of rope_theta)."""
        inv_freq = rotary_inverse_frequencies(self.rope_theta, self.head_dim)
        if self.rope_type == "linear":
            inv_freq = inv_freq / np.float32(self.rope_factor)
        elif self.rope_type == "llama3":
            inv_freq = _llama3_scaling(inv_freq, self)
        return inv_freq.astype(np.float32)

    def num_params(self) -> int:
        d, f, L, hd = self.d_model, self.ff_dim, self.n_layer, self.head_dim
        q, kv = self.n_head * hd, self.n_kv_head * hd
        attn = d * (q + 2 * kv) + q * d + (q + 2 * kv) * self.qkv_bias + d * self.o_bias
        mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + L * (attn + mlp + 2 * d) + d + head


def _llama3_scaling(inv_freq: np.ndarray, config: LlamaConfig) -> np.ndarray:
    """Llama 3.1 frequency scaling: long wavelengths divided by `factor`, short kept, a smooth ramp between."""
    factor, low, high = config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
    old_len = config.rope_original_max_len
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


class LlamaAttention(nn.Module):
    """Grouped-query attention with rotary positions: x [B, T, D] -> [B, T, D] and the layer cache.

    Projections return float32 (bf16 compute: bf16 operands, float32 accumulation); queries,
    keys and values are then cast to the compute dtype, as the KV cache holds them."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, allowed, layer_cache):
        config = self.config
        batch, length, _ = x.shape
        head_dim = config.head_dim
        dtype = DTYPES[config.dtype]
        query = dense(config.n_head * head_dim, config, "q_proj", config.qkv_bias)(x).astype(dtype)
        key = dense(config.n_kv_head * head_dim, config, "k_proj", config.qkv_bias)(x).astype(dtype)
        value = dense(config.n_kv_head * head_dim, config, "v_proj", config.qkv_bias)(x).astype(dtype)
        query = query.reshape(batch, length, config.n_head, head_dim)
        key = key.reshape(batch, length, config.n_kv_head, head_dim)
        value = value.reshape(batch, length, config.n_kv_head, head_dim)
        inv_freq = config.inverse_frequencies()
        query, key = apply_rope(query, positions, inv_freq), apply_rope(key, positions, inv_freq)
        key, value, layer_cache = cached_keys_values(layer_cache, key, value)
        out = dot_product_attention(query, key, value, allowed).reshape(batch, length, config.n_head * head_dim)
        return dense(config.d_model, config, "o_proj", config.o_bias)(out), layer_cache


class LlamaBlock(nn.Module):
    """Pre-RMSNorm block: x [B, T, D] float32 -> x + self_attn(input_layernorm(x)),
    then + mlp(post_attention_layernorm(x)) with a SwiGLU MLP."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, allowed, layer_cache):
        config = self.config
        dtype = DTYPES[config.dtype]
        attn_out, layer_cache = LlamaAttention(config, name="self_attn")(
            rms_norm(config, "input_layernorm")(x).astype(dtype), positions, allowed, layer_cache
        )
        x = x + attn_out.astype(x.dtype)
        mlp_in = rms_norm(config, "post_attention_layernorm")(x).astype(dtype)
        return x + GatedSiluMLP(config, config.mlp_bias, name="mlp")(mlp_in).astype(x.dtype), layer_cache


class Llama(CausalLM):
    """The Llama family: `CausalLM` with rotary positions inside attention and a tied or untied `lm_head`."""

    config: LlamaConfig
    token_embedding_name, output_head_name = "embed_tokens", "lm_head"
    block_module, block_name_prefix = LlamaBlock, "layers_"
    final_norm_layer, final_norm_name = staticmethod(rms_norm), "norm"
