"""KL penalty to a frozen reference and the adaptive KL controller (Ziegler et al. 2019)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kl_per_token(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str) -> jax.Array:
    """Per-token KL estimate from the sampled token's log-probabilities.

    k1 = log π − log π_ref (unbiased, can be negative); k3 = (r − 1) − log r with
    r = π_ref / π (unbiased, non-negative; Schulman 2020)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return jnp.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


def adaptive_kl_update(kl_coef: jax.Array, observed_kl: jax.Array, target: float, horizon: float, n_steps: int) -> jax.Array:
    """β ← β · (1 + clip(KL/target − 1, −0.2, 0.2) · n_steps / horizon)."""
    proportional_error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
    return kl_coef * (1.0 + proportional_error * n_steps / horizon)
