"""Codelengths in bits (SPEC §5): per-example costs, per-block sums, MDL, compression.

Everything is in bits. Per-example costs −log₂ p(y|x) are computed on device in
float32 from natural-log probabilities; block costs are exact sums of those costs
over every example of the block, accumulated on the host in float64 — never a
batch mean, never nats.
"""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax.probing.blocks import block_starts

LN2 = math.log(2.0)


def example_bits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """−log₂ p(y|x) under softmax(logits): logits float[B, K], labels int[B] -> float32[B]."""
    chex.assert_rank(logits, 2)
    chex.assert_rank(labels, 1)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0] / LN2


def uniform_codelength(num_examples: int, num_classes: int) -> float:
    """N · log₂ K: the cost of sending every label with the uniform code."""
    return num_examples * math.log2(num_classes)


@dataclasses.dataclass(frozen=True)
class OnlineCodelength:
    """The online code of one probe on one probing set.

    block_bits: float64[num_blocks], the cost of each block; the first is n₁ · log₂ K.
    """

    block_bits: np.ndarray
    block_ends: np.ndarray
    num_classes: int

    @property
    def mdl_bits(self) -> float:
        return float(np.sum(self.block_bits))

    @property
    def uniform_bits(self) -> float:
        return uniform_codelength(int(self.block_ends[-1]), self.num_classes)

    @property
    def compression(self) -> float:
        return self.uniform_bits / self.mdl_bits


def online_codelength(bits: np.ndarray, ends: np.ndarray, num_classes: int) -> OnlineCodelength:
    """Block costs from per-example costs `bits[N]` (in block order) and cumulative `ends`.

    Block 0 is sent with the uniform code, n₁ · log₂ K, whatever `bits` holds there;
    block i > 0 costs the sum of `bits` over [ends[i-1], ends[i]), summed in float64.
    """
    bits = np.asarray(bits, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.int64)
    if bits.ndim != 1 or bits.shape[0] < ends[-1]:
        raise ValueError(f"bits must be a vector of at least {ends[-1]} costs, got shape {bits.shape}")
    if not np.all(np.isfinite(bits[ends[0] : ends[-1]])):
        raise FloatingPointError("non-finite per-example codelength (the probe produced NaN/inf)")
    starts = block_starts(ends)
    block_bits = np.add.reduceat(bits[: ends[-1]], starts)
    block_bits[0] = ends[0] * math.log2(num_classes)
    return OnlineCodelength(block_bits=block_bits, block_ends=ends, num_classes=num_classes)
