"""Minimum response length (ppo.min_response_len): the sampler never emits EOS before it, the
teacher-forced log-probs are those of the distribution the tokens were sampled from (EOS
suppressed at the same positions), and bad settings are one-line config errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbias_jax.config import ConfigError, config_from_dict
from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.heads import PolicyValueModel
from rlbias_jax.models.sampling import SamplingConfig, generate, generate_reference, suppress_early_eos
from rlbias_jax.rl.ppo import response_statistics

CONFIG = GPT2Config(vocab_size=13, n_layer=2, n_head=2, d_model=32, max_len=32)
EOS, PAD = 10, 12
EOS_BIAS = 8.0  # p(EOS) ~ e^8 / (e^8 + 12) ~ 0.996 at every step without a minimum


def _biased_policy():
    """A tiny random policy (with value head) whose EOS logit is raised by EOS_BIAS everywhere."""
    model = PolicyValueModel(GPT2(CONFIG))
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]

    def apply_fn(p, tokens, positions, mask, cache):
        out = model.apply({"params": p}, tokens, positions=positions, attention_mask=mask, cache=cache)
        return out.replace(logits=out.logits.at[..., EOS].add(EOS_BIAS))

    return apply_fn, params


def _prompts(batch=16):
    return jax.random.randint(jax.random.key(1), (batch, 6), 0, 10), jnp.ones((batch, 6), bool)


def _sample(sampling, key=3):
    apply_fn, params = _biased_policy()
    prompt, mask = _prompts()
    cache = CONFIG.init_cache(prompt.shape[0], prompt.shape[1] + sampling.max_new_tokens)
    out = jax.jit(lambda p, k: generate(apply_fn, p, prompt, mask, k, sampling, cache))(params, jax.random.key(key))
    return np.asarray(out.tokens), np.asarray(out.mask)


@pytest.mark.parametrize("greedy", [False, True])
def test_no_eos_before_the_minimum(greedy):
    sampling = SamplingConfig(max_new_tokens=8, eos_id=EOS, pad_id=PAD, greedy=greedy)
    free, _ = _sample(sampling)
    assert (free[:, 0] == EOS).mean() >= 0.9  # the bias ends (nearly) every response at once
    tokens, valid = _sample(dataclasses.replace(sampling, min_new_tokens=5))
    assert not (tokens[:, :5] == EOS).any() and valid[:, :5].all()
    assert (tokens[:, 5] == EOS).mean() >= 0.9  # allowed again from the 6th new token on
    for row_tokens, row_valid in zip(tokens, valid):  # PAD and masked after the first EOS, as without a minimum
        eos = np.flatnonzero(row_tokens == EOS)
        if eos.size:
            assert row_valid[: eos[0] + 1].all() and not row_valid[eos[0] + 1 :].any()


@pytest.mark.parametrize("sampling", [
    SamplingConfig(max_new_tokens=8, eos_id=EOS, pad_id=PAD, min_new_tokens=3),
    SamplingConfig(max_new_tokens=6, temperature=0.7, top_k=5, top_p=0.8, eos_id=EOS, pad_id=PAD, min_new_tokens=6),
])
def test_cached_sampling_equals_uncached_with_a_minimum(sampling):
    apply_fn, params = _biased_policy()
    prompt, mask = _prompts(5)
    cache = CONFIG.init_cache(5, prompt.shape[1] + sampling.max_new_tokens)
    fast = jax.jit(lambda p, k: generate(apply_fn, p, prompt, mask, k, sampling, cache))(params, jax.random.key(4))
    slow = generate_reference(apply_fn, params, prompt, mask, jax.random.key(4), sampling)
    np.testing.assert_array_equal(np.asarray(fast.tokens), np.asarray(slow.tokens))
    np.testing.assert_array_equal(np.asarray(fast.mask), np.asarray(slow.mask))


def test_suppress_early_eos_by_hand():
    logits = jnp.asarray([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])  # [B=1, N=3, V=3], EOS = 2
    out = np.asarray(suppress_early_eos(logits, jnp.arange(3), 2, 2))
    lowest = np.finfo(np.float32).min
    np.testing.assert_array_equal(out, [[[1.0, 2.0, lowest], [1.0, 2.0, lowest], [1.0, 2.0, 3.0]]])
    assert suppress_early_eos(logits, jnp.arange(3), 0, 2) is logits  # no minimum: untouched
    assert suppress_early_eos(logits, jnp.arange(3), 2, None) is logits  # no EOS: untouched


def _teacher_forced_reference(apply_fn, params, tokens, response_len, temperature, min_new_tokens):
    """Float64, one position at a time: log p(token) and entropy of the sampler's distribution."""
    logits = np.asarray(apply_fn(params, tokens, None, None, None).logits, np.float64)
    prompt_len = tokens.shape[1] - response_len
    logprobs, entropies = np.zeros((tokens.shape[0], response_len)), np.zeros((tokens.shape[0], response_len))
    for row in range(tokens.shape[0]):
        for i in range(response_len):
            step = logits[row, prompt_len - 1 + i] / temperature
            allowed = np.ones(step.shape, bool)
            if i < min_new_tokens:
                allowed[EOS] = False  # the sampler cannot draw EOS here
            log_z = np.log(np.exp(step[allowed]).sum())
            probs = np.where(allowed, np.exp(step - log_z), 0.0)
            logprobs[row, i] = step[int(tokens[row, prompt_len + i])] - log_z
            entropies[row, i] = -(probs[allowed] * (step[allowed] - log_z)).sum()
    return logprobs, entropies


@pytest.mark.parametrize("min_new_tokens", [0, 4, 6])
def test_teacher_forced_logprobs_are_the_sampling_distribution(min_new_tokens):
    apply_fn, params = _biased_policy()
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.8, eos_id=EOS, pad_id=PAD, min_new_tokens=min_new_tokens)
    prompt, mask = _prompts(4)
    cache = CONFIG.init_cache(4, 12)
    out = jax.jit(lambda p, k: generate(apply_fn, p, prompt, mask, k, sampling, cache))(params, jax.random.key(7))
    tokens = jnp.concatenate([prompt, out.tokens], axis=1)
    logprobs, values, entropy = jax.jit(
        lambda p, t: response_statistics(apply_fn, p, t, 6, 0.8, None, EOS, min_new_tokens))(params, tokens)
    expected_logprobs, expected_entropy = _teacher_forced_reference(apply_fn, params, np.asarray(tokens), 6, 0.8, min_new_tokens)
    valid = np.asarray(out.mask)
    np.testing.assert_allclose(np.asarray(logprobs)[valid], expected_logprobs[valid], atol=2e-5)
    np.testing.assert_allclose(np.asarray(entropy), expected_entropy, atol=2e-5)
    assert values.shape == (4, 6)
    if min_new_tokens:  # with the minimum, the likely EOS is gone, so the sampled tokens are far likelier
        unmasked, _, _ = response_statistics(apply_fn, params, tokens, 6, 0.8)
        early = valid[:, :min_new_tokens]
        assert (np.asarray(logprobs)[:, :min_new_tokens][early] > np.asarray(unmasked)[:, :min_new_tokens][early] + 3).all()


def test_gradients_through_the_suppressed_eos_are_finite():
    apply_fn, params = _biased_policy()
    prompt, _ = _prompts(2)
    tokens = jnp.concatenate([prompt, jnp.ones((2, 4), jnp.int32)], axis=1)

    def loss(p):
        logprobs, _, entropy = response_statistics(apply_fn, p, tokens, 4, 1.0, None, EOS, 4)
        return logprobs.sum() + entropy.sum()

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


# CONFIG


def _nl(**ppo):
    return {"run": {"experiment": "nl"}, "task": {"task_ids": [1]}, "model": {"source": "smollm2"}, "reward": {"kind": "vader_lexicon"},
            "ppo": {"response_len": 8, **ppo}}


@pytest.mark.parametrize("data, message", [
    (_nl(min_response_len=9), r"^ppo.min_response_len: \(9\) must be in \[0, ppo.response_len \(8\)\]$"),
    (_nl(min_response_len=-1), r"^ppo.min_response_len: \(-1\) must be in \[0, ppo.response_len \(8\)\]$"),
    ({"ppo": {"min_response_len": 2}}, r"^ppo.min_response_len: must be 0 for run.experiment = 'toy'"),
])
def test_bad_minimum_is_a_one_line_config_error(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_minimum_equal_to_the_response_length_is_valid():
    assert config_from_dict(_nl(min_response_len=8)).ppo.min_response_len == 8
