"""GPT-2 in Flax (Hugging Face `GPT2LMHeadModel` semantics).

Pre-LayerNorm blocks, learned absolute positions, GELU (tanh approximation), tied
input/output embeddings. Parameter names follow the Hugging Face checkpoint
(`wte`, `wpe`, `h_{i}/{ln_1,attn/c_attn,attn/c_proj,ln_2,mlp/c_fc,mlp/c_proj}`,
`ln_f`) and Dense kernels are [in, out], which is exactly HF's Conv1D layout, so
loading is a short name map (see `rlbias_jax.models.loading`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rlbias_jax.models.decoder import positions_and_allowed, run_blocks
from rlbias_jax.models.kv_cache import KVCache, cached_keys_values, dot_product_attention, init_cache

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    max_len: int = 1024
    n_inner: int | None = None  # feed-forward width; 4 * d_model when None
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ff_dim(self) -> int:
        return self.n_inner or 4 * self.d_model

    def init_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        return init_cache(self.n_layer, batch, max_len or self.max_len, self.n_head, self.head_dim, DTYPES[self.dtype])

    def num_params(self) -> int:
        """Parameters excluding position embeddings (nanoGPT's convention for FLOP counts)."""
        d, f, L = self.d_model, self.ff_dim, self.n_layer
        per_layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        return self.vocab_size * d + L * per_layer + 2 * d


@flax.struct.dataclass
class LMOutput:
    """What every causal LM in this package returns.

    logits [B, T, V] (float32); hidden [B, T, D] final (post-LN) hidden states;
    cache: the updated KVCache or None; layer_hidden: tuple of [B, T, D] per layer
    (embeddings first, n_layer + 1 entries) when requested, else None.
    """

    logits: jax.Array
    hidden: jax.Array
    cache: KVCache | None = None
    layer_hidden: tuple | None = None


@jax.custom_vjp
def _matmul_f32_out(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., K] @ kernel [K, N] with float32 accumulation and output (bf16 inputs).

    On CPUs with AVX512-BF16, XLA runs bf16 × bf16 → f32 GEMMs about twice as fast as
    f32 ones, but bf16 → bf16 ones no faster than f32; JAX's own transpose rule would
    give the backward pass the slow bf16 → bf16 form, hence the explicit VJP.
    """
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _matmul_f32_out_fwd(x, kernel):
    return _matmul_f32_out(x, kernel), (x, kernel)


def _matmul_f32_out_bwd(residuals, grad):
    x, kernel = residuals
    grad = grad.astype(kernel.dtype)
    grad_x = jax.lax.dot_general(grad, kernel, (((grad.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    batch = tuple(range(x.ndim - 1))
    grad_kernel = jax.lax.dot_general(x, grad, ((batch, batch), ((), ())), preferred_element_type=jnp.float32)
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


_matmul_f32_out.defvjp(_matmul_f32_out_fwd, _matmul_f32_out_bwd)


def _dot_f32_out(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's dot_general (contract lhs's last axis with rhs's first) via `_matmul_f32_out`."""
    assert dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())), dimension_numbers
    return _matmul_f32_out(lhs, rhs)


def _dense(features: int, config: GPT2Config, name: str) -> nn.Dense:
    # bf16 compute: bf16 operands, float32 accumulation and output (the residual stream is float32 anyway)
    mixed = {"dot_general": _dot_f32_out} if config.dtype == "bfloat16" else {}
    return nn.Dense(
        features,
        dtype=DTYPES[config.dtype],
        param_dtype=DTYPES[config.param_dtype],
        kernel_init=nn.initializers.normal(0.02),
        name=name,
        **mixed,
    )


def _layer_norm(config: GPT2Config, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=DTYPES[config.param_dtype], name=name)


class GPT2Attention(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x, allowed, layer_cache):
        config = self.config
        batch, length, _ = x.shape
        qkv = _dense(3 * config.d_model, config, "c_attn")(x).astype(DTYPES[config.dtype])
        query, key, value = jnp.split(qkv, 3, axis=-1)
        shape = (batch, length, config.n_head, config.head_dim)
        query, key, value = query.reshape(shape), key.reshape(shape), value.reshape(shape)
        key, value, layer_cache = cached_keys_values(layer_cache, key, value)
        out = dot_product_attention(query, key, value, allowed).reshape(batch, length, config.d_model)
        return _dense(config.d_model, config, "c_proj")(out), layer_cache


class GPT2MLP(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x):
        hidden = _dense(self.config.ff_dim, self.config, "c_fc")(x)
        hidden = nn.gelu(hidden, approximate=True)
        return _dense(self.config.d_model, self.config, "c_proj")(hidden)


class GPT2Block(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x, allowed, layer_cache):
        dtype = DTYPES[self.config.dtype]
        attn_out, layer_cache = GPT2Attention(self.config, name="attn")(
            _layer_norm(self.config, "ln_1")(x).astype(dtype), allowed, layer_cache
        )
        x = x + attn_out.astype(x.dtype)
        x = x + GPT2MLP(self.config, name="mlp")(_layer_norm(self.config, "ln_2")(x).astype(dtype)).astype(x.dtype)
        return x, layer_cache


class GPT2(nn.Module):
    """tokens int32[B, T], positions int32[B, T], attention_mask bool[B, S] over key slots
    (S = T without a cache, S = cache.max_len with one)."""

    config: GPT2Config

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
        wte = nn.Embed(config.vocab_size, config.d_model, embedding_init=nn.initializers.normal(0.02),
                       param_dtype=DTYPES[config.param_dtype], name="wte")
        wpe = nn.Embed(config.max_len, config.d_model, embedding_init=nn.initializers.normal(0.01),
                       param_dtype=DTYPES[config.param_dtype], name="wpe")
        # The residual stream stays in float32; matmuls run in config.dtype.
        x = (wte(tokens) + wpe(positions)).astype(jnp.float32)
        blocks = [GPT2Block(config, name=f"h_{layer}") for layer in range(config.n_layer)]
        x, layer_hidden, new_cache = run_blocks(blocks, x, (allowed,), cache)
        hidden = _layer_norm(config, "ln_f")(x)
        logits = wte.attend(hidden.astype(DTYPES[config.dtype])).astype(jnp.float32)
        return LMOutput(
            logits=logits,
            hidden=hidden,
            cache=new_cache,
            layer_hidden=layer_hidden if return_layer_hidden else None,
        )
