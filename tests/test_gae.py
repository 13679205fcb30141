"""GAE against a float64 Python-loop reference; equivalences; whitening; KL controller."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbias_jax.rl.gae import masked_gae, whiten
from rlbias_jax.rl.kl import adaptive_kl_update, kl_per_token


def gae_reference(rewards, values, length, gamma, lam):
    """Plain loop over the valid prefix, float64; V after the last valid token is 0."""
    advantages = np.zeros(len(rewards))
    next_value, next_advantage = 0.0, 0.0
    for t in reversed(range(length)):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages


@pytest.fixture(autouse=True)
def float64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("length", [1, 3, 6])
@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (1.0, 1.0), (0.5, 0.0)])
@pytest.mark.parametrize("use_jit", [False, True])
def test_gae_equals_python_loop(length, gamma, lam, use_jit):
    rng = np.random.default_rng(length)
    rewards, values = rng.normal(size=6), rng.normal(size=6)
    mask = np.arange(6) < length
    fn = jax.jit(masked_gae, static_argnums=(3, 4)) if use_jit else masked_gae
    got = np.asarray(fn(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma, lam))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, gae_reference(rewards, values, length, gamma, lam), rtol=0, atol=1e-12)
    assert (got[length:] == 0).all()


def test_gae_lambda_one_is_discounted_return_minus_value():
    rng = np.random.default_rng(3)
    rewards, values = rng.normal(size=5), rng.normal(size=5)
    gamma = 0.9
    returns = np.array([sum(gamma ** (k - t) * rewards[k] for k in range(t, 5)) for t in range(5)])
    got = np.asarray(masked_gae(jnp.asarray(rewards), jnp.asarray(values), jnp.ones(5, bool), gamma, 1.0))
    np.testing.assert_allclose(got, returns - values, atol=1e-12)


def test_gae_hand_computed():
    # score 1 at the last of 3 tokens, values 0.5: δ = [-0.5 + γ·0.5, -0.5 + γ·0.5, 1 - 0.5]
    got = np.asarray(masked_gae(jnp.array([0.0, 0.0, 1.0]), jnp.array([0.5, 0.5, 0.5]), jnp.ones(3, bool), 1.0, 1.0))
    np.testing.assert_allclose(got, [0.5, 0.5, 0.5])


def test_whiten_masked():
    values = jnp.array([1.0, 2.0, 3.0, 100.0])
    mask = jnp.array([True, True, True, False])
    out = np.asarray(whiten(values, mask))
    np.testing.assert_allclose(out[:3].mean(), 0.0, atol=1e-7)
    np.testing.assert_allclose(out[:3].std(), 1.0, atol=1e-6)
    assert out[3] == 0.0


def test_kl_estimators_and_controller_by_hand():
    logp, ref = jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25]))
    np.testing.assert_allclose(kl_per_token(logp, ref, "k1"), [np.log(2.0)])
    np.testing.assert_allclose(kl_per_token(logp, ref, "k3"), [(0.5 - 1) - np.log(0.5)])
    # β 0.2, KL 9 vs target 6: error clipped to +0.2; 256 episodes over horizon 10,000
    np.testing.assert_allclose(adaptive_kl_update(0.2, 9.0, 6.0, 10000.0, 256), 0.2 * (1 + 0.2 * 256 / 10000))
    np.testing.assert_allclose(adaptive_kl_update(0.2, 5.4, 6.0, 10000.0, 256), 0.2 * (1 - 0.1 * 256 / 10000))
    np.testing.assert_allclose(adaptive_kl_update(0.2, 0.0, 6.0, 10000.0, 256), 0.2 * (1 - 0.2 * 256 / 10000))
