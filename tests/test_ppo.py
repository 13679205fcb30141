"""The PPO core (rl/ppo.py, rl/train.py, rl/kl.py), rlax style.

- `ppo_loss` against hand-computed numbers on 2×3 arrays, with a fake model whose
  logits and values are its parameters, so every ratio is chosen, not sampled;
- the first minibatch of the first epoch sees ratio 1 and no clipping, exactly;
- `response_statistics` (position P−1+i emits response token i) against a per-token loop;
- a one-token bandit that `ppo_iteration` must learn;
- the KL estimators, the adaptive KL controller and the per-token rewards by hand.
"""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from rlbias_jax.config import PPOConfig
from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.heads import PolicyOutput, PolicyValueModel
from rlbias_jax.models.sampling import SamplingConfig
from rlbias_jax.rl.kl import adaptive_kl_update, kl_per_token
from rlbias_jax.rl.ppo import Episodes, TrainState, make_optimizer, ppo_loss, ppo_update, response_statistics
from rlbias_jax.rl.train import Policy, RunData, init_run_state, per_token_rewards, ppo_iteration


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


# ---------------------------------------------------------------------------
# ppo_loss by hand
# ---------------------------------------------------------------------------

# B = 2 episodes, prompt length P = 2, response length N = 3, vocabulary 4. Response token i
# is emitted at position P − 1 + i = 1, 2, 3; positions 0 and 4 are never read.
PROMPT_LEN, RESPONSE_LEN, VOCAB = 2, 3, 4
RESPONSE = np.array([[0, 3, 1], [2, 2, 0]])
MASK = np.array([[True, True, True], [True, True, False]])  # token (1, 2) is after EOS
# clip_eps 0.2. Policy loss per token: max(−A·r, −A·clip(r, 0.8, 1.2)).
RATIO = np.array([[1.5, 0.5, 1.1], [0.7, 1.3, 1.0]])
ADVANTAGE = np.array([[2.0, -1.0, 1.0], [1.0, -0.5, 0.0]])
#   (0,0) r 1.5 > 1.2, A > 0: clipped,   max(−3.0, −2.4) = −2.4
#   (0,1) r 0.5 < 0.8, A < 0: clipped,   max(0.5, 0.8)   = 0.8
#   (0,2) r 1.1 inside:       unclipped, −1.1
#   (1,0) r 0.7 < 0.8, A > 0: unclipped (the pessimistic term is r), max(−0.7, −0.8) = −0.7
#   (1,1) r 1.3 > 1.2, A < 0: unclipped, max(0.65, 0.6) = 0.65
POLICY_LOSS = (-2.4 + 0.8 - 1.1 - 0.7 + 0.65) / 5
POLICY_CLIPFRAC = 2 / 5
MEAN_RATIO = (1.5 + 0.5 + 1.1 + 0.7 + 1.3) / 5
# value_clip_eps 0.2. Value loss per token: max((v − R)², (v_old + clip(v − v_old, ±0.2) − R)²).
VALUE = np.array([[0.5, 0.5, 0.9], [-1.0, -0.3, 0.0]])
OLD_VALUE = np.array([[0.0, 0.0, 1.0], [-0.5, 0.3, 0.0]])
RETURN = np.array([[1.0, 0.0, 2.0], [-0.2, -0.5, 0.0]])
#   (0,0) (0.5 − 1)² = 0.25 < (0.2 − 1)²  = 0.64: clipped
#   (0,1) (0.5 − 0)² = 0.25 > (0.2 − 0)²  = 0.04
#   (0,2) v − v_old = −0.1 inside: 1.21 both
#   (1,0) (−1 + 0.2)² = 0.64 > (−0.7 + 0.2)² = 0.25
#   (1,1) (−0.3 + 0.5)² = 0.04 < (0.1 + 0.5)² = 0.36: clipped
VALUE_LOSS = {0.0: 0.5 * (0.25 + 0.25 + 1.21 + 0.64 + 0.04) / 5, 0.2: 0.5 * (0.64 + 0.25 + 1.21 + 0.64 + 0.36) / 5}
VALUE_CLIPFRAC = {0.0: 0.0, 0.2: 2 / 5}
MEAN_VALUE = (0.5 + 0.5 + 0.9 - 1.0 - 0.3) / 5
VALUE_COEF, ENTROPY_COEF = 0.7, 0.05


def _fake_apply(params, tokens, positions, mask, cache):
    """A 'model' whose outputs are its parameters: logits [B, T, V] and values [B, T]."""
    return PolicyOutput(logits=params["logits"], values=params["values"])


def _hand_case(temperature: float, masked_extreme: float):
    """Parameters and a batch realising RATIO, ADVANTAGE, VALUE, ... at the valid tokens.

    `masked_extreme` fills everything the loss must ignore: the masked token's old log-prob,
    advantage, values and return, and the never-read positions 0 and 4.
    """
    rng = np.random.default_rng(0)
    emitting = slice(PROMPT_LEN - 1, PROMPT_LEN - 1 + RESPONSE_LEN)
    logits = np.broadcast_to(masked_extreme * np.array([1.0, -1.0, 0.5, 0.0]), (2, PROMPT_LEN + RESPONSE_LEN, VOCAB)).copy()
    logits[:, emitting] = rng.normal(size=(2, RESPONSE_LEN, VOCAB))
    values = np.full((2, PROMPT_LEN + RESPONSE_LEN), masked_extreme)
    values[:, emitting] = np.where(MASK, VALUE, masked_extreme)
    tokens = np.concatenate([np.zeros((2, PROMPT_LEN), int), RESPONSE], axis=1)

    log_probs_all = _log_softmax(logits[:, emitting] / temperature)
    new_logprobs = np.take_along_axis(log_probs_all, RESPONSE[..., None], -1)[..., 0]
    old_logprobs = np.where(MASK, new_logprobs - np.log(RATIO), new_logprobs - masked_extreme)
    entropy = -(np.exp(log_probs_all) * log_probs_all).sum(-1)

    batch = Episodes(
        tokens=jnp.asarray(tokens, jnp.int32),
        response_mask=jnp.asarray(MASK),
        logprobs=jnp.asarray(old_logprobs),
        values=jnp.asarray(np.where(MASK, OLD_VALUE, -masked_extreme)),
        advantages=jnp.asarray(np.where(MASK, ADVANTAGE, masked_extreme)),
        returns=jnp.asarray(np.where(MASK, RETURN, masked_extreme)),
    )
    params = {"logits": jnp.asarray(logits), "values": jnp.asarray(values)}
    return params, batch, entropy[MASK].mean(), log_probs_all


class PPOLossByHandTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))

    def _config(self, value_clip_eps, temperature, value_coef=VALUE_COEF, entropy_coef=ENTROPY_COEF):
        return PPOConfig(clip_eps=0.2, value_clip_eps=value_clip_eps, temperature=temperature,
                         value_coef=value_coef, entropy_coef=entropy_coef)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(value_clip_eps=(0.0, 0.2), temperature=(1.0, 0.6))
    def test_loss_and_statistics_equal_hand_computation(self, value_clip_eps, temperature):
        config = self._config(value_clip_eps, temperature)
        params, batch, mean_entropy, _ = _hand_case(temperature, masked_extreme=30.0)
        loss, stats = self.variant(lambda p, b: ppo_loss(p, _fake_apply, b, config))(params, batch)
        self.assertEqual(loss.dtype, jnp.float64)
        approxkl = 0.5 * (np.log(RATIO[MASK]) ** 2).mean()
        expected = {
            "loss/policy": POLICY_LOSS,
            "loss/value": VALUE_LOSS[value_clip_eps],
            "loss/total": POLICY_LOSS + VALUE_COEF * VALUE_LOSS[value_clip_eps] - ENTROPY_COEF * mean_entropy,
            "policy/entropy": mean_entropy,
            "policy/approxkl": approxkl,
            "policy/clipfrac": POLICY_CLIPFRAC,
            "val/ratio": MEAN_RATIO,
            "val/clipfrac": VALUE_CLIPFRAC[value_clip_eps],
            "val/mean": MEAN_VALUE,
        }
        self.assertEqual(set(stats), set(expected))
        for name, value in expected.items():
            if name.endswith("clipfrac"):  # counted in float32 by the code: k/5 exactly as float32
                self.assertEqual(float(stats[name]), float(np.float32(value)), name)
            else:
                np.testing.assert_allclose(stats[name], value, rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(loss, expected["loss/total"], rtol=0, atol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.0, 0.2)
    def test_masked_token_changes_nothing(self, value_clip_eps):
        """Two different extremes at the masked token and the unread positions: identical outputs."""
        config = self._config(value_clip_eps, 1.0)
        loss_and_grad = self.variant(jax.value_and_grad(lambda p, b: ppo_loss(p, _fake_apply, b, config), has_aux=True))
        outputs = []
        for extreme in (30.0, -1e4):
            params, batch, _, _ = _hand_case(1.0, masked_extreme=extreme)
            (loss, stats), grads = loss_and_grad(params, batch)
            self.assertTrue(np.isfinite(loss))
            outputs.append((loss, stats, grads))
            # nothing flows into the masked token's position (3 in row 1) or the unread ones (0, 4)
            np.testing.assert_array_equal(grads["logits"][1, 3], 0.0)
            np.testing.assert_array_equal(grads["values"][1, 3], 0.0)
            np.testing.assert_array_equal(grads["logits"][:, [0, 4]], 0.0)
            np.testing.assert_array_equal(grads["values"][:, [0, 4]], 0.0)
        (loss_a, stats_a, _), (loss_b, stats_b, _) = outputs
        self.assertEqual(float(loss_a), float(loss_b))
        for name in stats_a:
            self.assertEqual(float(stats_a[name]), float(stats_b[name]), name)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.0, 0.6)
    def test_policy_gradient_is_zero_on_clipped_tokens(self, temperature):
        """Policy term only: ∂loss/∂logits = −A·r·(onehot − π)/(T·n_valid) on unclipped tokens, 0 on clipped."""
        config = self._config(0.0, temperature, value_coef=0.0, entropy_coef=0.0)
        params, batch, _, log_probs_all = _hand_case(temperature, masked_extreme=30.0)
        grads = self.variant(jax.grad(lambda p, b: ppo_loss(p, _fake_apply, b, config)[0]))(params, batch)
        clipped = np.array([[True, True, False], [False, False, False]])
        onehot = np.eye(VOCAB)[RESPONSE]
        expected = -(ADVANTAGE * RATIO)[..., None] * (onehot - np.exp(log_probs_all)) / (temperature * MASK.sum())
        expected = np.where((MASK & ~clipped)[..., None], expected, 0.0)
        got = np.asarray(grads["logits"][:, PROMPT_LEN - 1 : PROMPT_LEN - 1 + RESPONSE_LEN])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("use_jit", [False, True])
def test_masked_token_with_an_overflowing_ratio_changes_nothing(use_jit):
    params, batch, _, _ = _hand_case(1.0, masked_extreme=0.0)
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    batch = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.float64 else x, batch)
    batch = batch.replace(logprobs=batch.logprobs.at[1, 2].add(-100.0))  # masked token, ratio e^100
    loss_and_grad = jax.value_and_grad(lambda p, b: ppo_loss(p, _fake_apply, b, PPOConfig()), has_aux=True)
    (loss, stats), grads = (jax.jit(loss_and_grad) if use_jit else loss_and_grad)(params, batch)
    assert np.isfinite(loss) and np.isfinite(stats["val/ratio"])
    assert np.isfinite(np.asarray(grads["logits"])).all()


# ---------------------------------------------------------------------------
# A tiny GPT-2 policy (1 layer, width 32)
# ---------------------------------------------------------------------------

TINY = GPT2Config(vocab_size=8, n_layer=1, n_head=2, d_model=32, max_len=16)
TINY_MODEL = PolicyValueModel(GPT2(TINY))


def _tiny_apply(params, tokens, positions, mask, cache):
    return TINY_MODEL.apply({"params": params}, tokens, positions=positions, attention_mask=mask, cache=cache)


@functools.partial(jax.jit, static_argnums=1)
def _tiny_params(key, random_value_head: bool = False):
    init_key, head_key = jax.random.split(key)
    params = TINY_MODEL.init(init_key, jnp.zeros((1, 4), jnp.int32))["params"]
    if random_value_head:  # the value head starts at zero; give it something to align
        kernel = params["value_head"]["kernel"]
        params = {**params, "value_head": {**params["value_head"], "kernel": jax.random.normal(head_key, kernel.shape)}}
    return params


def _tiny_policy(config: PPOConfig, score_fn, eos_id=None) -> Policy:
    return Policy(
        apply_fn=_tiny_apply,
        init_cache=TINY.init_cache,
        score_fn=score_fn,
        sampling=SamplingConfig(max_new_tokens=config.response_len, temperature=config.temperature,
                                eos_id=eos_id, pad_id=0 if eos_id is None else eos_id),
        optimizer=make_optimizer(config),
    )


def test_response_statistics_align_with_a_per_token_loop():
    """Token i of the response is scored by a forward pass over tokens[:P+i], read at its last position."""
    prompt_len, response_len, temperature = 4, 3, 0.7
    params = _tiny_params(jax.random.key(0), random_value_head=True)
    tokens = jax.random.randint(jax.random.key(1), (3, prompt_len + response_len), 0, TINY.vocab_size)
    logprobs, values, entropies = jax.jit(
        lambda p, t: response_statistics(_tiny_apply, p, t, response_len, temperature))(params, tokens)
    chex.assert_shape([logprobs, values, entropies], (3, response_len))
    forward = jax.jit(lambda p, t: _tiny_apply(p, t, None, None, None))
    for i in range(response_len):
        out = forward(params, tokens[:, : prompt_len + i])
        log_probs_all = _log_softmax(np.asarray(out.logits[:, -1], np.float64) / temperature)
        token = np.asarray(tokens[:, prompt_len + i])
        np.testing.assert_allclose(logprobs[:, i], log_probs_all[np.arange(3), token], rtol=0, atol=2e-5)
        np.testing.assert_allclose(values[:, i], out.values[:, -1], rtol=0, atol=2e-5)
        entropy = -(np.exp(log_probs_all) * log_probs_all).sum(-1)
        np.testing.assert_allclose(entropies[:, i], entropy, rtol=0, atol=2e-5)
    assert np.abs(np.asarray(values)).min() > 1e-3, "values must be non-trivial for the check to mean anything"


def test_first_minibatch_of_first_epoch_has_ratio_exactly_one():
    """One epoch, one minibatch: the statistics are those of the rollout's own parameters."""
    config = PPOConfig(episodes_per_iteration=16, minibatch_size=16, epochs=1, response_len=3, temperature=0.8,
                       learning_rate=1e-2, kl_coef=0.1, adaptive_kl=True, kl_target=0.01, kl_horizon=100.0)
    eos = TINY.vocab_size - 1
    policy = _tiny_policy(config, lambda responses, mask, labels, prompts: mask.sum(1).astype(jnp.float32), eos_id=eos)
    params, reference = _tiny_params(jax.random.key(0)), _tiny_params(jax.random.key(1))
    data = RunData(prompts=jax.random.randint(jax.random.key(2), (8, 4), 0, eos), labels=jnp.zeros(8, jnp.int32))
    state = init_run_state(params, policy.optimizer, jax.random.key(3), config.kl_coef)
    new_state, stats = jax.jit(lambda s: ppo_iteration(s, data, reference, policy, config))(state)
    assert float(stats["val/ratio"]) == 1.0
    assert float(stats["policy/clipfrac"]) == 0.0
    assert float(stats["policy/approxkl"]) == 0.0
    assert 1.0 < float(stats["response/length"]) < 3.0, "EOS should shorten some responses (masks differ)"
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new_state.train.params)
    assert any(jax.tree.leaves(changed)), "the update must have moved the parameters"
    # the controller is fed the logged KL and n_steps = episodes per iteration; the KL between two
    # random initialisations (measured 0.060) is far above the target 0.01, so the error clips at +0.2
    expected_beta = adaptive_kl_update(jnp.float32(0.1), stats["objective/kl"], 0.01, 100.0, 16)
    assert float(new_state.kl_coef) == float(expected_beta)
    np.testing.assert_allclose(float(new_state.kl_coef), 0.1 * (1 + 0.2 * 16 / 100), rtol=1e-6)


def _lookup_apply(params, tokens, positions, mask, cache):
    """A bigram 'model': logits and value at a position are looked up from that position's token."""
    return PolicyOutput(logits=params["logits"][tokens], values=params["values"][tokens])


def test_zero_learning_rate_keeps_ratio_one_through_shuffled_epochs_and_minibatches():
    """With no parameter change, every shuffled minibatch of every epoch must still see ratio 1:
    the permutation moves tokens, masks, old log-probs, advantages and returns together."""
    config = PPOConfig(episodes_per_iteration=16, minibatch_size=4, epochs=3, response_len=3)
    vocab = 6
    params = {"logits": jax.random.normal(jax.random.key(0), (vocab, vocab)),
              "values": jax.random.normal(jax.random.key(1), (vocab,))}
    tokens = jax.random.randint(jax.random.key(2), (16, 7), 0, vocab)
    logprobs, values, _ = response_statistics(_lookup_apply, params, tokens, 3, 1.0)
    mask = jnp.arange(3)[None, :] < jax.random.randint(jax.random.key(3), (16, 1), 1, 4)
    advantages = jax.random.normal(jax.random.key(4), (16, 3))
    episodes = Episodes(tokens=tokens, response_mask=mask, logprobs=logprobs, values=values,
                        advantages=advantages, returns=values + advantages)
    optimizer = make_optimizer(dataclasses.replace(config, learning_rate=0.0))
    state = TrainState(params=params, opt_state=optimizer.init(params))
    new_state, stats = jax.jit(lambda s, k: ppo_update(s, episodes, k, _lookup_apply, optimizer, config))(
        state, jax.random.key(5))
    assert float(stats["val/ratio"]) == 1.0
    assert float(stats["policy/clipfrac"]) == 0.0
    assert float(stats["policy/approxkl"]) == 0.0
    assert float(stats["policy/grad_norm"]) > 0.0
    chex.assert_trees_all_equal(new_state.params, params)


# ---------------------------------------------------------------------------
# A one-token bandit: reward 1 for token 5 (chance 1/8), 0 otherwise
# ---------------------------------------------------------------------------

BANDIT_TARGET = 5
BANDIT_CONFIG = PPOConfig(iterations=24, episodes_per_iteration=32, minibatch_size=8, epochs=4, response_len=1,
                          learning_rate=1e-3)


def _bandit_train(seed):
    config = BANDIT_CONFIG
    policy = _tiny_policy(config, lambda responses, mask, labels, prompts: (responses[:, 0] == BANDIT_TARGET).astype(jnp.float32))
    init_key, data_key, run_key = jax.random.split(jax.random.key(seed), 3)
    prompts = jax.random.randint(data_key, (16, 4), 0, TINY.vocab_size)
    data = RunData(prompts=prompts, labels=jnp.zeros(16, jnp.int32))
    params = _tiny_params(init_key)

    def iteration(state, _):
        state, stats = ppo_iteration(state, data, None, policy, config)
        return state, stats["env/reward_mean"]

    state, rewards = jax.lax.scan(iteration, init_run_state(params, policy.optimizer, run_key, 0.0), None,
                                  length=config.iterations)

    def target_probability(p):
        return jax.nn.softmax(_tiny_apply(p, prompts, None, None, None).logits[:, -1])[:, BANDIT_TARGET].mean()

    return rewards, target_probability(params), target_probability(state.train.params), state.failed


_bandit_train_jit = jax.jit(_bandit_train)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_token_bandit_learns_the_rewarded_token(seed):
    # Measured over seeds 0-19: initial π(target) 0.112-0.148, final π(target) >= 0.992, mean
    # reward of the first 3 iterations <= 0.344 and of the last 5 >= 0.975 (gap >= 0.65).
    rewards, initial, final, failed = _bandit_train_jit(seed)
    rewards = np.asarray(rewards)
    assert not bool(failed)
    assert float(initial) < 0.25
    assert float(final) > 0.9
    assert rewards[-5:].mean() > 0.8
    assert rewards[-5:].mean() > rewards[:3].mean() + 0.3


# ---------------------------------------------------------------------------
# KL estimators, the adaptive controller and per-token rewards by hand
# ---------------------------------------------------------------------------


class KLAndRewardsByHandTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))

    @chex.variants(with_jit=True, without_jit=True)
    def test_adaptive_kl_update_against_its_formula(self):
        # β 0.5, target 2, n_steps 10, horizon 50: β ← 0.5·(1 + clip(KL/2 − 1, ±0.2)·0.2)
        observed = jnp.array([3.0, 2.4, 2.2, 2.0, 1.8, 0.5, 0.0])
        # errors: 0.5 → +0.2 (clipped), 0.2 (edge), 0.1, 0, −0.1, −0.75 → −0.2 (clipped), −1 → −0.2
        expected = [0.52, 0.52, 0.51, 0.5, 0.49, 0.48, 0.48]
        update = self.variant(lambda kl: adaptive_kl_update(jnp.float64(0.5), kl, 2.0, 50.0, 10))
        np.testing.assert_allclose(update(observed), expected, rtol=0, atol=1e-12)
        # horizon and n_steps enter as their ratio; β scales the step
        np.testing.assert_allclose(adaptive_kl_update(0.2, 9.0, 6.0, 10000.0, 256), 0.2 * (1 + 0.2 * 256 / 10000), atol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_kl_per_token_k1_and_k3(self):
        p = np.array([[0.5, 0.1, 0.9], [0.3, 0.7, 0.02]])
        p_ref = np.array([[0.25, 0.4, 0.9], [0.6, 0.7, 0.5]])
        logp, logp_ref = jnp.asarray(np.log(p)), jnp.asarray(np.log(p_ref))
        k1 = self.variant(lambda a, b: kl_per_token(a, b, "k1"))(logp, logp_ref)
        k3 = self.variant(lambda a, b: kl_per_token(a, b, "k3"))(logp, logp_ref)
        np.testing.assert_allclose(k1, np.log(p / p_ref), rtol=0, atol=1e-12)
        ratio = p_ref / p  # k3 = (r − 1) − log r, r = π_ref/π
        np.testing.assert_allclose(k3, (ratio - 1) - np.log(ratio), rtol=0, atol=1e-12)
        np.testing.assert_allclose(k3[0, 0], 0.5 - 1 + np.log(2.0), rtol=0, atol=1e-12)
        self.assertTrue(np.all(np.asarray(k3) >= 0))
        self.assertEqual(float(k3[0, 2]), 0.0)
        self.assertEqual(float(k3[1, 1]), 0.0)

    def test_kl_per_token_rejects_an_unknown_estimator(self):
        with self.assertRaisesRegex(ValueError, "k2"):
            kl_per_token(jnp.zeros(2), jnp.zeros(2), "k2")

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_token_rewards_on_a_hand_made_mask(self):
        scores = jnp.array([2.0, -1.0, 0.5])
        kl = jnp.array([[0.1, 0.2, 0.3, 1e6], [0.4, 1e6, -1e6, 1e6], [0.5, -0.6, 0.7, 0.8]])
        mask = jnp.array([[True, True, True, False], [True, False, False, False], [True, True, True, True]])
        rewards = self.variant(per_token_rewards)(scores, kl, mask, jnp.float64(0.5))
        expected = [
            [-0.05, -0.1, -0.15 + 2.0, 0.0],
            [-0.2 - 1.0, 0.0, 0.0, 0.0],
            [-0.25, 0.3, -0.35, -0.4 + 0.5],
        ]
        np.testing.assert_allclose(rewards, expected, rtol=0, atol=1e-12)
