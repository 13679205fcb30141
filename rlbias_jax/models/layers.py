"""The layers GPT-2, the Llama family and GPT-NeoX are built from: dense projections (with a
bf16-operand / float32-accumulation path), LayerNorm and RMSNorm, the GELU and gated-SiLU
MLPs, and rotary position embeddings (full or partial).

Each helper takes the family's config and reads only the fields it names (`dtype`,
`param_dtype`, `d_model`, `ff_dim`, and the norm's epsilon), so one definition serves every
family while parameter names stay those of each Hugging Face checkpoint.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# DENSE: bf16 OPERANDS, FLOAT32 ACCUMULATION AND OUTPUT


@jax.custom_vjp
def matmul_f32_out(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., K] @ kernel [K, N] -> float32 [..., N], accumulated in float32 (bf16 operands).

    On CPUs with AVX512-BF16, XLA runs bf16 × bf16 → f32 GEMMs about twice as fast as
    f32 ones, but bf16 → bf16 ones no faster than f32; JAX's own transpose rule would
    give the backward pass the slow bf16 → bf16 form, hence the explicit VJP, whose two
    GEMMs (grad_x [..., K], grad_kernel [K, N]) also take bf16 operands and accumulate in float32.
    """
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _matmul_f32_out_fwd(x, kernel):
    return matmul_f32_out(x, kernel), (x, kernel)


def _matmul_f32_out_bwd(residuals, grad):
    x, kernel = residuals
    grad = grad.astype(kernel.dtype)
    grad_x = jax.lax.dot_general(grad, kernel, (((grad.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    batch = tuple(range(x.ndim - 1))
    grad_kernel = jax.lax.dot_general(x, grad, ((batch, batch), ((), ())), preferred_element_type=jnp.float32)
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


matmul_f32_out.defvjp(_matmul_f32_out_fwd, _matmul_f32_out_bwd)


def _dot_general_f32_out(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's dot_general (contract lhs's last axis with rhs's first) via `matmul_f32_out`."""
    assert dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())), dimension_numbers
    return matmul_f32_out(lhs, rhs)


def dense(features: int, config, name: str | None, use_bias: bool = True) -> nn.Dense:
    """A Dense layer [..., K] -> [..., features], kernel [K, features] initialised N(0, 0.02²).

    config.dtype "float32": plain float32 nn.Dense. "bfloat16": bf16 operands with float32
    accumulation and a float32 output (`matmul_f32_out`); the residual stream is float32 anyway.
    """
    mixed = {"dot_general": _dot_general_f32_out} if config.dtype == "bfloat16" else {}
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=DTYPES[config.dtype],
        param_dtype=DTYPES[config.param_dtype],
        kernel_init=nn.initializers.normal(0.02),
        name=name,
        **mixed,
    )


# NORMS (always computed in float32)


def layer_norm(config, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm with scale and bias over the last axis, epsilon config.layer_norm_eps; float32 output."""
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=DTYPES[config.param_dtype], name=name)


def rms_norm(config, name: str | None = None) -> nn.RMSNorm:
    """RMSNorm with a scale over the last axis, epsilon config.rms_norm_eps; float32 output."""
    return nn.RMSNorm(epsilon=config.rms_norm_eps, dtype=jnp.float32, param_dtype=DTYPES[config.param_dtype], name=name)


# MLPs


class GeluMLP(nn.Module):
    """x [B, T, d_model] -> [B, T, d_model]: up-projection to config.ff_dim, GELU, down-projection.

    `names` are the checkpoint's names of the two projections (GPT-2: c_fc, c_proj;
    GPT-NeoX: dense_h_to_4h, dense_4h_to_h); `approximate` selects the tanh GELU.
    """

    config: object
    names: tuple[str, str]
    approximate: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        up_name, down_name = self.names
        hidden = dense(self.config.ff_dim, self.config, up_name)(x)
        hidden = nn.gelu(hidden, approximate=self.approximate)
        return dense(self.config.d_model, self.config, down_name)(hidden)


class GatedSiluMLP(nn.Module):
    """x [B, T, d_model] -> [B, T, d_model]: down_proj(silu(gate_proj(x)) * up_proj(x)) (SwiGLU)."""

    config: object
    use_bias: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        config = self.config
        gate = dense(config.ff_dim, config, "gate_proj", self.use_bias)(x)
        up = dense(config.ff_dim, config, "up_proj", self.use_bias)(x)
        return dense(config.d_model, config, "down_proj", self.use_bias)(nn.silu(gate) * up)


# ROTARY POSITION EMBEDDINGS


def rotary_inverse_frequencies(theta: float, rotary_dim: int) -> np.ndarray:
    """float32[rotary_dim // 2]: theta ** (-2i / rotary_dim), computed as HF does (float32 powers)."""
    exponents = np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate the first 2 * len(inv_freq) features of x [B, T, H, D] by position (HF's rotate-half layout).

    positions int32[B, T]. With half = len(inv_freq) and angle = position * inv_freq:
    out[:half] = x1 cos - x2 sin, out[half:2 half] = x2 cos + x1 sin; features past 2 * half
    pass through (GPT-NeoX's partial rotary). Computed in float32, returned in x's dtype.
    """
    half = inv_freq.shape[0]
    angles = positions.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_freq)  # [B, T, half]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x_float = x.astype(jnp.float32)
    x1, x2, rest = x_float[..., :half], x_float[..., half : 2 * half], x_float[..., 2 * half :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return rotated.astype(x.dtype)
