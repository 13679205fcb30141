"""GRPO and RLOO (rl/critic_free.py, the critic-free branch of rl/train.py), rlax style:
group advantages, leave-one-out baselines, the k3 KL and the losses against hand-computed
numbers; a Python-loop reference on random groups; prompts repeated in contiguous groups;
a one-token bandit that both algorithms must learn inside the sweep's iteration."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from rlbias_jax.config import AlgorithmConfig, PPOConfig
from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.heads import PolicyOutput, PolicyValueModel
from rlbias_jax.models.sampling import SamplingConfig
from rlbias_jax.rl.critic_free import (
    GRPO_STD_EPS,
    critic_free_loss,
    group_normalised_advantages,
    leave_one_out_advantages,
    sequence_advantages,
)
from rlbias_jax.rl.ppo import Episodes, make_optimizer
from rlbias_jax.rl.train import Policy, RunData, critic_free_episodes, init_run_state, ppo_iteration, sample_prompt_indices

GRPO = AlgorithmConfig(name="grpo", group_size=3)
RLOO = AlgorithmConfig(name="rloo", group_size=3)
# two groups of G = 3: [0, 1, 2] and [1, 0, 0]
REWARDS = np.array([0.0, 1.0, 2.0, 1.0, 0.0, 0.0])


class AdvantagesByHandTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))

    @chex.variants(with_jit=True, without_jit=True)
    def test_grpo_group_normalised_advantages(self):
        # group [0, 1, 2]: mean 1, Bessel std sqrt((1 + 0 + 1) / 2) = 1 (without Bessel: sqrt(2/3))
        # group [1, 0, 0]: mean 1/3, centred [2/3, -1/3, -1/3], Bessel std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3)
        got = self.variant(lambda r: group_normalised_advantages(r, 3, "std"))(jnp.asarray(REWARDS))
        s = np.sqrt(1 / 3)
        expected = [-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4), (2 / 3) / (s + 1e-4), (-1 / 3) / (s + 1e-4), (-1 / 3) / (s + 1e-4)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        self.assertEqual(GRPO_STD_EPS, 1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_grpo_without_normalisation_only_centres(self):
        got = self.variant(lambda r: group_normalised_advantages(r, 3, "none"))(jnp.asarray(REWARDS))
        np.testing.assert_allclose(got, [-1.0, 0.0, 1.0, 2 / 3, -1 / 3, -1 / 3], rtol=0, atol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_grpo_group_of_equal_rewards_has_zero_advantage(self):
        got = self.variant(lambda r: group_normalised_advantages(r, 4, "std"))(jnp.array([0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.0, 0.0]))
        # second group: mean 0.5, Bessel std sqrt(4 · 0.25 / 3) = sqrt(1/3)
        a = 0.5 / (np.sqrt(1 / 3) + 1e-4)
        np.testing.assert_allclose(got, [0, 0, 0, 0, a, a, -a, -a], rtol=0, atol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_rloo_leave_one_out_baseline(self):
        # [0, 1, 2]: baselines (1+2)/2, (0+2)/2, (0+1)/2 = 1.5, 1, 0.5; [1, 0, 0]: 0, 0.5, 0.5
        got = self.variant(lambda r: leave_one_out_advantages(r, 3))(jnp.asarray(REWARDS))
        np.testing.assert_allclose(got, [-1.5, 0.0, 1.5, 1.0, -0.5, -0.5], rtol=0, atol=1e-12)

    def test_sequence_advantages_dispatch_on_the_algorithm(self):
        rewards = jnp.asarray(REWARDS)
        np.testing.assert_array_equal(sequence_advantages(rewards, GRPO), group_normalised_advantages(rewards, 3))
        np.testing.assert_array_equal(sequence_advantages(rewards, RLOO), leave_one_out_advantages(rewards, 3))
        none = dataclasses.replace(GRPO, normalisation="none")
        np.testing.assert_array_equal(sequence_advantages(rewards, none), group_normalised_advantages(rewards, 3, "none"))
        with pytest.raises(ValueError, match="critic-free"):
            sequence_advantages(rewards, AlgorithmConfig())

    def test_against_a_python_loop_on_random_groups(self):
        rng = np.random.default_rng(0)
        for group_size in (2, 3, 5, 8):
            rewards = rng.normal(size=4 * group_size)
            grpo = np.asarray(group_normalised_advantages(jnp.asarray(rewards), group_size))
            rloo = np.asarray(leave_one_out_advantages(jnp.asarray(rewards), group_size))
            for start in range(0, rewards.size, group_size):
                group = list(rewards[start : start + group_size])
                mean = sum(group) / group_size
                std = (sum((r - mean) ** 2 for r in group) / (group_size - 1)) ** 0.5
                for i, r in enumerate(group):
                    others = [g for j, g in enumerate(group) if j != i]
                    self.assertAlmostEqual(grpo[start + i], (r - mean) / (std + 1e-4), places=12)
                    self.assertAlmostEqual(rloo[start + i], r - sum(others) / len(others), places=12)
            # RLOO = G/(G-1) times the centred reward
            np.testing.assert_allclose(rloo, group_size / (group_size - 1) * np.asarray(
                group_normalised_advantages(jnp.asarray(rewards), group_size, "none")), rtol=0, atol=1e-12)

    def test_episodes_subtract_the_reward_side_kl_before_the_baseline(self):
        # scores [1, 0], per-token KL [[.1, .2], [.3, masked]], β 0.5: rewards 1 - .15, 0 - .15; RLOO G = 2: ±1
        mask = jnp.array([[True, True], [True, False]])
        kl = jnp.array([[0.1, 0.2], [0.3, 1e6]]) * mask
        algorithm = AlgorithmConfig(name="rloo", group_size=2)
        episodes = critic_free_episodes(jnp.zeros((2, 4), jnp.int32), mask, jnp.zeros((2, 2)), jnp.array([1.0, 0.0]), kl,
                                        jnp.float64(0.5), algorithm, None, None)
        np.testing.assert_allclose(episodes.advantages, [[1.0, 1.0], [-1.0, 0.0]], rtol=0, atol=1e-12)
        np.testing.assert_allclose(episodes.returns, [[0.85, 0.85], [-0.15, 0.0]], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(episodes.values, 0.0)


def test_prompts_are_repeated_in_contiguous_groups():
    index = np.asarray(sample_prompt_indices(jax.random.key(0), 1000, 32, 8))
    groups = index.reshape(4, 8)
    assert (groups == groups[:, :1]).all()
    assert len(set(groups[:, 0])) == 4
    # G = 1 is the PPO draw, unchanged
    np.testing.assert_array_equal(sample_prompt_indices(jax.random.key(0), 1000, 32, 1),
                                  jax.random.randint(jax.random.key(0), (32,), 0, 1000))


# ---------------------------------------------------------------------------
# The loss by hand: B = 2 responses, P = 2, N = 3, vocabulary 4
# ---------------------------------------------------------------------------

PROMPT_LEN, RESPONSE_LEN, VOCAB = 2, 3, 4
RESPONSE = np.array([[0, 3, 1], [2, 2, 0]])
MASK = np.array([[True, True, True], [True, True, False]])
RATIO = np.array([[1.5, 0.5, 1.1], [0.7, 1.3, 1.0]])
SEQUENCE_ADVANTAGE = np.array([2.0, -1.0])
# clipped, clip 0.2, per token max(−A·r, −A·clip(r, 0.8, 1.2)):
#   row 0 (A = 2):  r 1.5 → max(−3, −2.4) = −2.4; r 0.5 → max(−1, −1.6) = −1.0; r 1.1 → −2.2; mean −5.6/3
#   row 1 (A = −1): r 0.7 → max(0.7, 0.8) = 0.8; r 1.3 → max(1.3, 1.2) = 1.3; mean 1.05
CLIPPED_LOSS = (-5.6 / 3 + 1.05) / 2
CLIPFRAC = 2 / 5  # (0, 0) and (1, 0)
# reinforce, −A·r: row 0: −2·3.1/3; row 1: (0.7 + 1.3)/2
REINFORCE_LOSS = (-2 * 3.1 / 3 + 1.0) / 2
# k3 with r = π_ref/π: (r − 1) − log r; r = 0.5, 1, 2 | 0.25, 1
REF_RATIO = np.array([[0.5, 1.0, 2.0], [0.25, 1.0, 1.0]])
K3 = (REF_RATIO - 1) - np.log(REF_RATIO)
KL_LOSS = (K3[0].mean() + K3[1, :2].mean()) / 2
KL_COEF, ENTROPY_COEF = 0.04, 0.05


def _fake_apply(params, tokens, positions, mask, cache):
    return PolicyOutput(logits=params["logits"], values=jnp.zeros(params["logits"].shape[:2]))


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _hand_case(ratio, masked_extreme=30.0):
    rng = np.random.default_rng(1)
    emitting = slice(PROMPT_LEN - 1, PROMPT_LEN - 1 + RESPONSE_LEN)
    logits = np.full((2, PROMPT_LEN + RESPONSE_LEN, VOCAB), masked_extreme)
    logits[:, emitting] = rng.normal(size=(2, RESPONSE_LEN, VOCAB))
    log_probs_all = _log_softmax(logits[:, emitting])
    new = np.take_along_axis(log_probs_all, RESPONSE[..., None], -1)[..., 0]
    batch = Episodes(
        tokens=jnp.asarray(np.concatenate([np.zeros((2, PROMPT_LEN), int), RESPONSE], 1), jnp.int32),
        response_mask=jnp.asarray(MASK),
        logprobs=jnp.asarray(np.where(MASK, new - np.log(ratio), new - masked_extreme)),
        values=jnp.zeros((2, RESPONSE_LEN)),
        advantages=jnp.asarray(np.where(MASK, SEQUENCE_ADVANTAGE[:, None], masked_extreme)),
        returns=jnp.zeros((2, RESPONSE_LEN)),
        ref_logprobs=jnp.asarray(np.where(MASK, new + np.log(REF_RATIO), new - masked_extreme)),
    )
    entropy = -(np.exp(log_probs_all) * log_probs_all).sum(-1)
    return {"logits": jnp.asarray(logits)}, batch, entropy[MASK].mean(), log_probs_all


class LossByHandTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(objective=("clipped", "reinforce"), kl_coef=(0.0, KL_COEF))
    def test_loss_and_statistics_equal_hand_computation(self, objective, kl_coef):
        config = PPOConfig(clip_eps=0.2, entropy_coef=ENTROPY_COEF)
        algorithm = AlgorithmConfig(name="rloo", objective=objective, kl_coef=kl_coef)
        params, batch, mean_entropy, _ = _hand_case(RATIO)
        loss, stats = self.variant(lambda p, b: critic_free_loss(p, _fake_apply, b, config, algorithm=algorithm))(params, batch)
        policy = CLIPPED_LOSS if objective == "clipped" else REINFORCE_LOSS
        kl = KL_LOSS if kl_coef > 0 else 0.0
        expected = {
            "loss/policy": policy,
            "loss/kl": kl,
            "loss/total": policy + kl_coef * kl - ENTROPY_COEF * mean_entropy,
            "policy/entropy": mean_entropy,
            "policy/approxkl": 0.5 * (np.log(RATIO[MASK]) ** 2).mean(),
            "val/ratio": RATIO[MASK].mean(),
        }
        for name, value in expected.items():
            np.testing.assert_allclose(stats[name], value, rtol=0, atol=1e-12, err_msg=name)
        self.assertEqual(float(stats["policy/clipfrac"]), float(np.float32(CLIPFRAC)))
        np.testing.assert_allclose(loss, expected["loss/total"], rtol=0, atol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_token_changes_nothing(self):
        config = PPOConfig(entropy_coef=ENTROPY_COEF)
        algorithm = AlgorithmConfig(name="grpo", kl_coef=KL_COEF)
        loss_and_grad = self.variant(jax.value_and_grad(
            lambda p, b: critic_free_loss(p, _fake_apply, b, config, algorithm=algorithm), has_aux=True))
        outputs = []
        for extreme in (30.0, -1e4):
            params, batch, _, _ = _hand_case(RATIO, masked_extreme=extreme)
            (loss, _), grads = loss_and_grad(params, batch)
            self.assertTrue(np.isfinite(loss))
            np.testing.assert_array_equal(grads["logits"][1, 3], 0.0)
            outputs.append(float(loss))
        self.assertEqual(outputs[0], outputs[1])

    @chex.variants(with_jit=True, without_jit=True)
    def test_reinforce_gradient_at_ratio_one(self):
        """∂loss/∂logits = −A_i (onehot − π) / (n_i · B) per valid token: REINFORCE, each response's tokens averaged."""
        config = PPOConfig(entropy_coef=0.0)
        algorithm = AlgorithmConfig(name="rloo", objective="reinforce")
        params, batch, _, log_probs_all = _hand_case(np.ones_like(RATIO))
        grads = self.variant(jax.grad(lambda p, b: critic_free_loss(p, _fake_apply, b, config, algorithm=algorithm)[0]))(params, batch)
        onehot = np.eye(VOCAB)[RESPONSE]
        per_token = (SEQUENCE_ADVANTAGE / MASK.sum(1))[:, None, None] / 2
        expected = np.where(MASK[..., None], -per_token * (onehot - np.exp(log_probs_all)), 0.0)
        np.testing.assert_allclose(grads["logits"][:, PROMPT_LEN - 1 : PROMPT_LEN - 1 + RESPONSE_LEN], expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# A one-token bandit (reward 1 for token 5, chance 1/8) through ppo_iteration
# ---------------------------------------------------------------------------

TINY = GPT2Config(vocab_size=8, n_layer=1, n_head=2, d_model=32, max_len=16)
TINY_MODEL = PolicyValueModel(GPT2(TINY))
BANDIT = PPOConfig(iterations=24, episodes_per_iteration=32, minibatch_size=8, epochs=4, response_len=1, learning_rate=1e-3)


def _tiny_apply(params, tokens, positions, mask, cache):
    return TINY_MODEL.apply({"params": params}, tokens, positions=positions, attention_mask=mask, cache=cache)


@functools.partial(jax.jit, static_argnums=(1,))
def _bandit_train(seed, algorithm: AlgorithmConfig):
    policy = Policy(apply_fn=_tiny_apply, init_cache=TINY.init_cache,
                    score_fn=lambda responses, mask, labels, prompts: (responses[:, 0] == 5).astype(jnp.float32),
                    sampling=SamplingConfig(max_new_tokens=1, temperature=1.0, eos_id=None, pad_id=0),
                    optimizer=make_optimizer(BANDIT))
    init_key, data_key, run_key = jax.random.split(jax.random.key(seed), 3)
    prompts = jax.random.randint(data_key, (16, 4), 0, TINY.vocab_size)
    data = RunData(prompts=prompts, labels=jnp.zeros(16, jnp.int32))
    params = TINY_MODEL.init(init_key, jnp.zeros((1, 4), jnp.int32))["params"]

    def iteration(state, _):
        state, stats = ppo_iteration(state, data, params, policy, BANDIT, algorithm)
        return state, stats["env/reward_mean"]

    state, rewards = jax.lax.scan(iteration, init_run_state(params, policy.optimizer, run_key, 0.0), None, length=BANDIT.iterations)
    return rewards, state.failed


@pytest.mark.parametrize("algorithm", [
    AlgorithmConfig(name="grpo", group_size=8, kl_coef=0.04),
    AlgorithmConfig(name="rloo", group_size=8, objective="reinforce"),
], ids=["grpo", "rloo"])
def test_one_token_bandit_is_learned(algorithm):
    rewards, failed = _bandit_train(0, algorithm)
    rewards = np.asarray(rewards)
    assert not bool(failed)
    assert rewards[-5:].mean() > 0.8, rewards
    assert rewards[-5:].mean() > rewards[:3].mean() + 0.3, rewards
