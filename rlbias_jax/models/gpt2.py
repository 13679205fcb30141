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
import jax
import jax.numpy as jnp

from rlbias_jax.models.decoder import CausalLM, DecoderConfig, token_embedding
from rlbias_jax.models.kv_cache import cached_keys_values, dot_product_attention
from rlbias_jax.models.layers import DTYPES, GeluMLP, dense, layer_norm


@dataclasses.dataclass(frozen=True)
class GPT2Config(DecoderConfig):
    max_len: int = 1024
    n_inner: int | None = None  # feed-forward width; 4 * d_model when None
    layer_norm_eps: float = 1e-5

    @property
    def ff_dim(self) -> int:
        return self.n_inner or 4 * self.d_model

    def num_params(self) -> int:
        """Parameters excluding position embeddings (nanoGPT's convention for FLOP counts)."""
        d, f, L = self.d_model, self.ff_dim, self.n_layer
        per_layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        return self.vocab_size * d + L * per_layer + 2 * d


class GPT2Attention(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x, allowed, layer_cache):
        config = self.config
        batch, length, _ = x.shape
        qkv = dense(3 * config.d_model, config, "c_attn")(x).astype(DTYPES[config.dtype])
        query, key, value = jnp.split(qkv, 3, axis=-1)
        shape = (batch, length, config.n_head, config.head_dim)
        query, key, value = query.reshape(shape), key.reshape(shape), value.reshape(shape)
        key, value, layer_cache = cached_keys_values(layer_cache, key, value)
        out = dot_product_attention(query, key, value, allowed).reshape(batch, length, config.d_model)
        return dense(config.d_model, config, "c_proj")(out), layer_cache


class GPT2Block(nn.Module):
    """Pre-LayerNorm block: x [B, T, D] float32 -> x + attn(ln_1(x)), then + mlp(ln_2(x)).

    `positions` is unused (GPT-2 adds its positions at the embedding); it is there so that
    every family's block has the same call."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x, positions, allowed, layer_cache):
        del positions
        config = self.config
        dtype = DTYPES[config.dtype]
        attn_out, layer_cache = GPT2Attention(config, name="attn")(
            layer_norm(config, "ln_1")(x).astype(dtype), allowed, layer_cache
        )
        x = x + attn_out.astype(x.dtype)
        mlp = GeluMLP(config, names=("c_fc", "c_proj"), approximate=True, name="mlp")
        x = x + mlp(layer_norm(config, "ln_2")(x).astype(dtype)).astype(x.dtype)
        return x, layer_cache


class GPT2(CausalLM):
    """GPT-2: `CausalLM` with learned absolute positions added to the token embeddings and a tied head."""

    config: GPT2Config
    token_embedding_name, output_head_name = "wte", None  # always tied
    block_module, block_name_prefix = GPT2Block, "h_"
    final_norm_layer, final_norm_name = staticmethod(layer_norm), "ln_f"

    @nn.nowrap
    def embed_inputs(self, tokens: jax.Array, positions: jax.Array) -> tuple[jax.Array, nn.Embed]:
        config = self.config
        wte = token_embedding(config.vocab_size, config, "wte")
        wpe = token_embedding(config.max_len, config, "wpe", stddev=0.01)
        return (wte(tokens) + wpe(positions)).astype(jnp.float32), wte

    @nn.nowrap
    def embed_from_params(self, params: dict, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        tokens_part = super().embed_from_params(params, tokens, positions)
        return tokens_part + params["wpe"]["embedding"][positions].astype(jnp.float32)
