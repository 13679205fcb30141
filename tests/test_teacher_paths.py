"""The fast teacher-forced path of a partly frozen policy gives the log-probs, values and entropies
of the full computation (issue 13 item 2).

The fast path (rlbias_jax.models.split, rl.train.teacher_inputs): the trunk's output is taken
from the KV-cache sampler instead of a second trunk pass, and the top computes its norm, value
head and vocabulary-sized head at the N response-emitting positions only. The reference is
`PolicyValueModel(lm)` on the whole sequence followed by `rl.ppo.response_statistics`, with the
same temperature and EOS rule. Tiny random Llama (grouped-query attention, tied head), float32.

Tolerances (not bitwise: the three computations use other matrix shapes, so XLA sums in
another order): 2e-5 between the split and the full model on the same tokens; 1e-4 for the
sampler's features, which come from one-token cached steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlbias_jax.config import PPOConfig
from rlbias_jax.models import split
from rlbias_jax.models.heads import PolicyValueModel
from rlbias_jax.models.llama import Llama, LlamaConfig
from rlbias_jax.models.sampling import SamplingConfig, generate
from rlbias_jax.rl import train
from rlbias_jax.rl.ppo import response_statistics

VOCAB, PROMPT, RESPONSE, BATCH, FIRST = 40, 6, 5, 3, 2
EOS, MIN_NEW, TEMPERATURE = 7, 2, 0.7


def _lm() -> Llama:
    return Llama(LlamaConfig(vocab_size=VOCAB, n_layer=3, n_head=4, n_kv_head=2, d_model=32, ff_dim=48, max_len=32))


@pytest.fixture(scope="module")
def model_and_params():
    lm = _lm()
    model = PolicyValueModel(lm)
    params = model.init(jax.random.key(0), jnp.zeros((1, PROMPT), jnp.int32))["params"]
    # every parameter off its initial value (norm scales 1, value head 0), so no term vanishes
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten([leaf + 0.2 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])
    return lm, params


def _full_apply(lm):
    model = PolicyValueModel(lm)
    return lambda p, tokens, *_: model.apply({"params": p}, tokens)


def _top_apply(lm):
    return lambda p, features, *_: split.top(lm, p["lm"], p["value_head"], features, FIRST, RESPONSE)


def _statistics(apply_fn, params, tokens, inputs=None):
    return response_statistics(apply_fn, params, tokens, RESPONSE, TEMPERATURE, inputs, EOS, MIN_NEW)


def _sample(lm, params, key):
    """Responses from the sampler with a features-keeping model: tokens [B, P + N] and the Generation."""
    model = PolicyValueModel(lm, features_layer=FIRST)

    def apply_fn(p, tokens, positions, mask, cache):
        return model.apply({"params": p}, tokens, positions=positions, attention_mask=mask, cache=cache)

    prompts = jax.random.randint(key, (BATCH, PROMPT), 0, VOCAB)
    sampling = SamplingConfig(max_new_tokens=RESPONSE, temperature=TEMPERATURE, eos_id=EOS, min_new_tokens=MIN_NEW)
    generation = generate(apply_fn, params, prompts, jnp.ones(prompts.shape, bool), jax.random.key(3), sampling,
                          lm.config.init_cache(BATCH, PROMPT + RESPONSE))
    return jnp.concatenate([prompts, generation.tokens], axis=1), generation


def test_split_top_gives_the_full_models_statistics(model_and_params):
    lm, params = model_and_params
    tokens = jax.random.randint(jax.random.key(2), (BATCH, PROMPT + RESPONSE), 0, VOCAB)
    full = _statistics(_full_apply(lm), params, tokens)
    features = split.trunk(lm, params["lm"], tokens[:, :-1], FIRST)
    fast = _statistics(_top_apply(lm), params, tokens, features)
    for name, ours, reference in zip(("log-probs", "values", "entropies"), fast, full):
        assert ours.shape == (BATCH, RESPONSE), name
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=2e-5, err_msg=name)


def test_sampler_features_are_the_trunk_output(model_and_params):
    lm, params = model_and_params
    tokens, generation = _sample(lm, params, jax.random.key(4))
    assert generation.features.shape == (BATCH, PROMPT + RESPONSE - 1, lm.config.d_model)
    trunk = split.trunk(lm, params["lm"], tokens[:, :-1], FIRST)
    np.testing.assert_allclose(np.asarray(generation.features), np.asarray(trunk), atol=1e-4)


def test_statistics_from_the_sampler_features_equal_the_full_model(model_and_params):
    lm, params = model_and_params
    for seed in range(3):
        tokens, generation = _sample(lm, params, jax.random.key(10 + seed))
        full = _statistics(_full_apply(lm), params, tokens)
        fast = _statistics(_top_apply(lm), params, tokens, generation.features)
        for name, ours, reference in zip(("log-probs", "values", "entropies"), fast, full):
            np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-4, err_msg=f"{name}, seed {seed}")


def test_the_iteration_takes_the_features_from_the_sampler(model_and_params):
    """With features in the sampler's output, `ppo_iteration` never runs the trunk a second time."""
    lm, params = model_and_params
    model = PolicyValueModel(lm, features_layer=FIRST)
    trunk_calls = []

    def apply_fn(p, tokens, positions, mask, cache):
        return model.apply({"params": p}, tokens, positions=positions, attention_mask=mask, cache=cache)

    def features_fn(tokens):
        trunk_calls.append(tokens.shape)
        return split.trunk(lm, params["lm"], tokens[:, :-1], FIRST)

    config = PPOConfig(episodes_per_iteration=4, minibatch_size=2, epochs=1, response_len=RESPONSE, kl_coef=0.1)
    policy = train.Policy(apply_fn=apply_fn, init_cache=lm.config.init_cache,
                          score_fn=lambda responses, mask, labels, prompts: responses[:, 0].astype(jnp.float32),
                          sampling=SamplingConfig(max_new_tokens=RESPONSE), optimizer=optax.adam(0.0),
                          features_fn=features_fn, teacher_fn=_top_apply(lm))
    state = train.init_run_state(params, policy.optimizer, jax.random.key(5), 0.1)
    data = train.RunData(prompts=jax.random.randint(jax.random.key(6), (8, PROMPT), 0, VOCAB), labels=jnp.zeros(8, jnp.int32))
    _, stats = jax.jit(lambda s: train.ppo_iteration(s, data, params, policy, config))(state)
    assert trunk_calls == [] and np.isfinite(float(stats["loss/total"]))
    # learning rate 0: the ratio is 1 in every minibatch (to rounding: a minibatch is a smaller matmul than the
    # batch), as the old log-probs and the loss read the same features
    assert float(stats["val/ratio"]) == pytest.approx(1.0, abs=1e-5) and float(stats["policy/approxkl"]) < 1e-10
