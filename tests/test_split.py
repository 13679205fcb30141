"""The frozen-trunk / trainable-top split (rlbias_jax.models.split) equals the full
PolicyValueModel for every CausalLM family, on tiny random models."""

import jax
import numpy as np
import pytest

from rlbias_jax.models import split
from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.gpt_neox import GPTNeoX, GPTNeoXConfig
from rlbias_jax.models.heads import PolicyValueModel
from rlbias_jax.models.llama import Llama, LlamaConfig

VOCAB, LENGTH, HEAD_POSITIONS = 50, 9, 4

FAMILIES = {
    "gpt2": lambda: GPT2(GPT2Config(vocab_size=VOCAB, n_layer=3, n_head=4, d_model=32, max_len=32)),
    "llama_tied": lambda: Llama(LlamaConfig(vocab_size=VOCAB, n_layer=3, n_head=4, n_kv_head=2, d_model=32,
                                            ff_dim=48, max_len=32)),
    "llama_untied_qkv_bias": lambda: Llama(LlamaConfig(vocab_size=VOCAB, n_layer=3, n_head=4, n_kv_head=1,
                                                       d_model=32, ff_dim=40, max_len=32, tie_word_embeddings=False,
                                                       qkv_bias=True, rope_theta=500.0)),
    "gpt_neox_parallel": lambda: GPTNeoX(GPTNeoXConfig(vocab_size=VOCAB, n_layer=3, n_head=4, d_model=32,
                                                       ff_dim=64, max_len=32, rotary_pct=0.5)),
    "gpt_neox_sequential_tied": lambda: GPTNeoX(GPTNeoXConfig(vocab_size=VOCAB, n_layer=3, n_head=2, d_model=32,
                                                              ff_dim=48, max_len=32, rotary_pct=0.25,
                                                              use_parallel_residual=False, tie_word_embeddings=True)),
}


def _perturbed(params, key):
    """Every parameter moved off its initial value (norm scales 1, biases 0, value head 0)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("first_trainable", [0, 2])
def test_trunk_then_top_equal_the_full_model(family, first_trainable):
    lm = FAMILIES[family]()
    model = PolicyValueModel(lm)
    tokens = jax.random.randint(jax.random.key(0), (2, LENGTH), 0, VOCAB)
    params = _perturbed(model.init(jax.random.key(1), tokens)["params"], jax.random.key(2))
    full = model.apply({"params": params}, tokens)
    layer_hidden = lm.apply({"params": params["lm"]}, tokens, return_layer_hidden=True).layer_hidden

    hidden = split.trunk(lm, params["lm"], tokens, first_trainable)
    # the same blocks on the same inputs, run op by op: the trunk is the full model's own hidden state
    np.testing.assert_array_equal(np.asarray(hidden), np.asarray(layer_hidden[first_trainable]))

    # the top on positions 0 … T − 2 gives the outputs of the last HEAD_POSITIONS of them, and only those
    out = split.top(lm, params["lm"], params["value_head"], hidden[:, :-1], first_trainable, HEAD_POSITIONS)
    used = slice(LENGTH - 1 - HEAD_POSITIONS, LENGTH - 1)
    assert out.logits.shape == (2, HEAD_POSITIONS, VOCAB) and out.values.shape == (2, HEAD_POSITIONS)
    np.testing.assert_allclose(np.asarray(out.values), np.asarray(full.values[:, used]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(full.logits[:, used]), atol=1e-5)


def test_block_and_final_norm_names_are_the_parameter_names():
    for family, make in FAMILIES.items():
        lm = make()
        params = jax.eval_shape(lm.init, jax.random.key(0), np.zeros((1, 3), np.int32))["params"]
        names = {lm.block(layer).name for layer in range(lm.config.n_layer)} | {lm.final_norm().name}
        assert names <= set(params), (family, names, sorted(params))


def test_trunk_rejects_a_module_without_the_interface():
    with pytest.raises(TypeError, match="CausalLM"):
        split.trunk(PolicyValueModel(FAMILIES["gpt2"]()), {}, np.zeros((1, 3), np.int32), 1)
