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
import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax.models.gpt2 import DTYPES, LMOutput
from rlbias_jax.models.decoder import positions_and_allowed, run_blocks
from rlbias_jax.models.kv_cache import KVCache, cached_keys_values, dot_product_attention, init_cache

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4
    d_model: int = 256
    ff_dim: int = 704
    head_size: int | None = None  # per-head width; d_model // n_head when None
    max_len: int = 2048
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
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig: n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"LlamaConfig: rope_type={self.rope_type!r} is not one of {ROPE_TYPES}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"LlamaConfig: {field}={getattr(self, field)!r} is not one of {tuple(DTYPES)}")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    def init_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        return init_cache(self.n_layer, batch, max_len or self.max_len, self.n_kv_head, self.head_dim, DTYPES[self.dtype])

    def inverse_frequencies(self) -> np.ndarray:
        """float32[head_dim // 2] rotary frequencies, computed as HF does (float32 powers of rope_theta)."""
        dim = self.head_dim
        inv_freq = 1.0 / (np.float32(self.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
        inv_freq = inv_freq.astype(np.float32)
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


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate the first 2 * len(inv_freq) features of x [B, T, H, D] by position (HF's rotate-half layout).

    With half = len(inv_freq) and angle = position * inv_freq:
    out[:half] = x1 cos - x2 sin, out[half:2 half] = x2 cos + x1 sin; features past 2 * half pass through.
    """
    half = inv_freq.shape[0]
    angles = positions.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_freq)  # [B, T, half]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x_float = x.astype(jnp.float32)
    x1, x2, rest = x_float[..., :half], x_float[..., half : 2 * half], x_float[..., 2 * half :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return rotated.astype(x.dtype)


def _dense(features: int, config: LlamaConfig, use_bias: bool, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=DTYPES[config.dtype],
        param_dtype=DTYPES[config.param_dtype],
        kernel_init=nn.initializers.normal(0.02),
        name=name,
    )


def _rms_norm(config: LlamaConfig, name: str) -> nn.RMSNorm:
    return nn.RMSNorm(epsilon=config.rms_norm_eps, dtype=jnp.float32, param_dtype=DTYPES[config.param_dtype], name=name)


class LlamaAttention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, allowed, layer_cache):
        config = self.config
        batch, length, _ = x.shape
        head_dim = config.head_dim
        query = _dense(config.n_head * head_dim, config, config.qkv_bias, "q_proj")(x)
        key = _dense(config.n_kv_head * head_dim, config, config.qkv_bias, "k_proj")(x)
        value = _dense(config.n_kv_head * head_dim, config, config.qkv_bias, "v_proj")(x)
        query = query.reshape(batch, length, config.n_head, head_dim)
        key = key.reshape(batch, length, config.n_kv_head, head_dim)
        value = value.reshape(batch, length, config.n_kv_head, head_dim)
        inv_freq = config.inverse_frequencies()
        query, key = apply_rope(query, positions, inv_freq), apply_rope(key, positions, inv_freq)
        key, value, layer_cache = cached_keys_values(layer_cache, key, value)
        out = dot_product_attention(query, key, value, allowed).reshape(batch, length, config.n_head * head_dim)
        return _dense(config.d_model, config, config.o_bias, "o_proj")(out), layer_cache


class LlamaMLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        config = self.config
        gate = _dense(config.ff_dim, config, config.mlp_bias, "gate_proj")(x)
        up = _dense(config.ff_dim, config, config.mlp_bias, "up_proj")(x)
        return _dense(config.d_model, config, config.mlp_bias, "down_proj")(nn.silu(gate) * up)


class LlamaBlock(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, allowed, layer_cache):
        dtype = DTYPES[self.config.dtype]
        attn_out, layer_cache = LlamaAttention(self.config, name="self_attn")(
            _rms_norm(self.config, "input_layernorm")(x).astype(dtype), positions, allowed, layer_cache
        )
        x = x + attn_out.astype(x.dtype)
        mlp_in = _rms_norm(self.config, "post_attention_layernorm")(x).astype(dtype)
        return x + LlamaMLP(self.config, name="mlp")(mlp_in).astype(x.dtype), layer_cache


class Llama(nn.Module):
    """Same call signature and output as `GPT2`: tokens int32[B, T], positions int32[B, T],
    attention_mask bool[B, S] over key slots (S = T without a cache, cache.max_len with one)."""

    config: LlamaConfig

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
                         param_dtype=DTYPES[config.param_dtype], name="embed_tokens")
        # The residual stream stays in float32; matmuls run in config.dtype.
        x = embed(tokens).astype(jnp.float32)
        blocks = [LlamaBlock(config, name=f"layers_{layer}") for layer in range(config.n_layer)]
        x, layer_hidden, new_cache = run_blocks(blocks, x, (positions, allowed), cache)
        hidden = _rms_norm(config, "norm")(x)
        compute_hidden = hidden.astype(DTYPES[config.dtype])
        if config.tie_word_embeddings:
            logits = embed.attend(compute_hidden)
        else:
            logits = _dense(config.vocab_size, config, False, "lm_head")(compute_hidden)
        return LMOutput(
            logits=logits.astype(jnp.float32),
            hidden=hidden,
            cache=new_cache,
            layer_hidden=layer_hidden if return_layer_hidden else None,
        )
