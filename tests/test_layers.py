"""The shared model layers (rlbias_jax.models.layers): the bf16-operand / float32-accumulation
dense and its explicit VJP, against autodiff of the float32 reference, alone and inside a
Llama and a GPT-NeoX block; rotary embeddings against a pair-by-pair rotation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbias_jax.models.gpt_neox import GPTNeoXBlock, GPTNeoXConfig
from rlbias_jax.models.kv_cache import attention_bias
from rlbias_jax.models.layers import apply_rope, matmul_f32_out, rotary_inverse_frequencies
from rlbias_jax.models.llama import LlamaBlock, LlamaConfig

BF16_TOLERANCE = 3e-2  # max |Δ| / max |reference| after a handful of bf16 roundings (2^-9 each)


def _dot_generals(jaxpr):
    """Every dot_general equation in a jaxpr, nested ones (custom_vjp bodies, pjit) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from _dot_generals(inner)


def _mixed_dot_generals(fn, *args) -> int:
    """How many dot_generals in fn's jaxpr take bf16 operands and give a float32 result."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return sum(
        all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars) and eqn.outvars[0].aval.dtype == jnp.float32
        for eqn in _dot_generals(jaxpr)
    )


def _relative_error(approx, exact) -> float:
    approx, exact = np.asarray(approx, np.float32), np.asarray(exact, np.float32)
    return float(np.abs(approx - exact).max() / np.abs(exact).max())


# THE DENSE KERNEL ALONE


def test_matmul_f32_out_vjp_matches_float32_autodiff():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 5, 24))
    kernel = jax.random.normal(keys[1], (24, 16))
    cotangent = jax.random.normal(keys[2], (2, 5, 16))
    x16, kernel16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)

    out, vjp = jax.vjp(matmul_f32_out, x16, kernel16)
    assert out.dtype == jnp.float32
    # bf16 products are exact in float32: the forward is the float32 product of the rounded operands
    reference = x16.astype(jnp.float32) @ kernel16.astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference), rtol=1e-5, atol=1e-5)

    grad_x, grad_kernel = vjp(cotangent)
    assert (grad_x.dtype, grad_kernel.dtype) == (jnp.bfloat16, jnp.bfloat16)
    _, reference_vjp = jax.vjp(lambda a, b: a @ b, x, kernel)
    reference_x, reference_kernel = reference_vjp(cotangent)
    assert _relative_error(grad_x, reference_x) < BF16_TOLERANCE
    assert _relative_error(grad_kernel, reference_kernel) < BF16_TOLERANCE


def test_matmul_f32_out_backward_gemms_take_bf16_and_accumulate_in_float32():
    x = jnp.ones((2, 5, 24), jnp.bfloat16)
    kernel = jnp.ones((24, 16), jnp.bfloat16)
    grads = jax.grad(lambda a, b: matmul_f32_out(a, b).sum(), argnums=(0, 1))
    assert _mixed_dot_generals(grads, x, kernel) == 3  # forward, grad_x, grad_kernel


# INSIDE A BLOCK


def _llama_block(dtype):
    config = LlamaConfig(vocab_size=11, n_layer=1, n_head=4, n_kv_head=2, d_model=32, ff_dim=48,
                         qkv_bias=True, dtype=dtype)
    return LlamaBlock(config), 7  # q, k, v, o, gate, up, down projections


def _neox_block(dtype):
    config = GPTNeoXConfig(vocab_size=11, n_layer=1, n_head=4, d_model=32, ff_dim=64, rotary_pct=0.5, dtype=dtype)
    return GPTNeoXBlock(config), 4  # query_key_value, dense, dense_h_to_4h, dense_4h_to_h


@pytest.mark.parametrize("make_block", [_llama_block, _neox_block], ids=["llama", "gpt_neox"])
def test_bf16_block_gradients_match_float32_autodiff(make_block):
    """A bf16-compute block (float32 params) against jax.grad of the same block in float32."""
    (block32, n_dense), (block16, _) = make_block("float32"), make_block("bfloat16")
    batch, length, width = 2, 6, 32
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (batch, length, width))
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    allowed = attention_bias(length, length, 0, None)
    params = block32.init(keys[1], x, positions, allowed, None)["params"]
    leaves, treedef = jax.tree.flatten(params)
    params = treedef.unflatten([leaf + 0.1 * jax.random.normal(k, leaf.shape)
                                for leaf, k in zip(leaves, jax.random.split(keys[2], len(leaves)))])
    cotangent = jax.random.normal(jax.random.key(3), (batch, length, width))

    def loss(block):
        def fn(params, x):
            out, _ = block.apply({"params": params}, x, positions, allowed, None)
            assert out.dtype == jnp.float32  # the residual stream stays float32
            return jnp.sum(out * cotangent)
        return jax.jit(jax.grad(fn, argnums=(0, 1)))

    exact_params, exact_x = loss(block32)(params, x)
    approx_params, approx_x = loss(block16)(params, x)
    assert _relative_error(approx_x, exact_x) < BF16_TOLERANCE
    errors = jax.tree.map(_relative_error, approx_params, exact_params)
    worst = max(jax.tree.leaves(errors))
    print(f"\nbf16 block gradients: max |Δ| / max |ref| = {worst:.1e} (params), "
          f"{_relative_error(approx_x, exact_x):.1e} (input)")
    assert worst < BF16_TOLERANCE, errors
    # every projection runs bf16 x bf16 -> float32 forward and in both backward GEMMs
    assert _mixed_dot_generals(loss(block16), params, x) >= 3 * n_dense
    assert _mixed_dot_generals(loss(block32), params, x) == 0


# ROTARY EMBEDDINGS


def _rope_pair_by_pair(x, positions, inv_freq):
    """Feature i < half and feature i + half of each head rotated by angle position * inv_freq[i]."""
    x = np.asarray(x, np.float64)
    out = x.copy()
    half = len(inv_freq)
    for b, t, h in np.ndindex(*x.shape[:3]):
        for i in range(half):
            angle = float(positions[b, t]) * float(inv_freq[i])
            first, second = x[b, t, h, i], x[b, t, h, i + half]
            out[b, t, h, i] = first * math.cos(angle) - second * math.sin(angle)
            out[b, t, h, i + half] = second * math.cos(angle) + first * math.sin(angle)
    return out


@pytest.mark.parametrize("rotary_dim", [8, 4])  # full, and NeoX-style partial (the last 4 features pass through)
def test_apply_rope_rotates_feature_pairs_by_position(rotary_dim):
    head_dim = 8
    inv_freq = rotary_inverse_frequencies(100.0, rotary_dim)
    np.testing.assert_allclose(inv_freq, 100.0 ** (-np.arange(0, rotary_dim, 2) / rotary_dim), rtol=1e-6)
    x = jax.random.normal(jax.random.key(4), (2, 3, 2, head_dim))
    positions = np.asarray([[0, 1, 2], [5, 9, 17]], np.int32)
    rotated = apply_rope(x, jnp.asarray(positions), inv_freq)
    np.testing.assert_allclose(np.asarray(rotated), _rope_pair_by_pair(x, positions, inv_freq), atol=1e-5)
