"""KV-cache sampling equals uncached sampling; cached logits equal full-forward logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.heads import PolicyValueModel
from rlbias_jax.models.sampling import SamplingConfig, filter_logits, generate, generate_reference

CONFIG = GPT2Config(vocab_size=13, n_layer=2, n_head=2, d_model=32, max_len=32)


def _model_and_params(with_value=False):
    lm = GPT2(CONFIG)
    model = PolicyValueModel(lm) if with_value else lm
    tokens = jnp.zeros((1, 4), jnp.int32)
    params = model.init(jax.random.key(0), tokens)["params"]

    def apply_fn(p, tokens, positions, mask, cache):
        return model.apply({"params": p}, tokens, positions=positions, attention_mask=mask, cache=cache)

    return apply_fn, params


def _prompts():
    prompt = jax.random.randint(jax.random.key(1), (5, 7), 0, 11)
    mask = jnp.ones((5, 7), bool).at[1, :3].set(False).at[3, :1].set(False)  # left padding
    return jnp.where(mask, prompt, 12), mask


@pytest.mark.parametrize("with_value", [False, True])
@pytest.mark.parametrize("sampling", [
    SamplingConfig(max_new_tokens=8, eos_id=10, pad_id=12),
    SamplingConfig(max_new_tokens=8, greedy=True, pad_id=12),
    SamplingConfig(max_new_tokens=6, temperature=0.7, top_k=5, top_p=0.8, eos_id=10, pad_id=12),
])
def test_cached_sampling_equals_uncached(with_value, sampling):
    apply_fn, params = _model_and_params(with_value)
    prompt, mask = _prompts()
    cache = CONFIG.init_cache(prompt.shape[0], prompt.shape[1] + sampling.max_new_tokens)
    fast = jax.jit(lambda p, k: generate(apply_fn, p, prompt, mask, k, sampling, cache))(params, jax.random.key(3))
    slow = generate_reference(apply_fn, params, prompt, mask, jax.random.key(3), sampling)
    np.testing.assert_array_equal(np.asarray(fast.tokens), np.asarray(slow.tokens))
    np.testing.assert_array_equal(np.asarray(fast.mask), np.asarray(slow.mask))


def test_tokens_after_eos_are_pad_and_masked():
    apply_fn, params = _model_and_params()
    prompt, mask = _prompts()
    sampling = SamplingConfig(max_new_tokens=20, eos_id=10, pad_id=12, temperature=3.0)
    out = generate(apply_fn, params, prompt, mask, jax.random.key(5), sampling, CONFIG.init_cache(5, 27))
    tokens, valid = np.asarray(out.tokens), np.asarray(out.mask)
    for row in range(tokens.shape[0]):
        eos = np.flatnonzero(tokens[row] == 10)
        if eos.size:
            assert valid[row, : eos[0] + 1].all() and not valid[row, eos[0] + 1 :].any()
            assert (tokens[row, eos[0] + 1 :] == 12).all()
        else:
            assert valid[row].all()
    assert (tokens == 10).any(), "temperature 3 over 13 tokens should emit some EOS in 100 draws"


def test_cached_logits_equal_full_forward():
    apply_fn, params = _model_and_params()
    tokens = jax.random.randint(jax.random.key(2), (3, 9), 0, 13)
    full = apply_fn(params, tokens, None, None, None).logits
    cache = CONFIG.init_cache(3, 12)
    key_mask = jnp.ones((3, 12), bool)
    step = apply_fn(params, tokens[:, :5], None, key_mask, cache)
    pieces = [step.logits]
    for t in range(5, 9):
        step = apply_fn(params, tokens[:, t : t + 1], None, key_mask, step.cache)
        pieces.append(step.logits)
    np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-5)


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    top2 = filter_logits(logits, 2, 1.0)
    assert np.isfinite(np.asarray(top2)).tolist() == [[True, True, False, False]]
    nucleus = filter_logits(logits, 0, 0.7)  # 0.5 < 0.7 so the second token is needed, not the third
    assert np.isfinite(np.asarray(nucleus)).tolist() == [[True, True, False, False]]
    nucleus = filter_logits(logits, 0, 0.5)
    assert np.isfinite(np.asarray(nucleus)).tolist() == [[True, False, False, False]]
