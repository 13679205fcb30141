"""Our Flax GPT-2 / Llama-family / GPT-NeoX against `transformers` + torch (CPU, float32) on tiny random
checkpoints written with `save_pretrained`: logits, 20 greedy tokens, cached vs uncached logits, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlbias_jax.models.loading import load_pretrained  # noqa: E402
from rlbias_jax.models.sampling import SamplingConfig, generate  # noqa: E402

VOCAB = 97
HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4),
    "llama_tied_mha": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True, rms_norm_eps=1e-5,
    ),
    "llama_untied_gqa_theta5e5": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, rope_theta=500000.0,
    ),
    "llama3_rope_scaling": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ),
    "qwen2_bias_gqa": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False, rope_theta=1000000.0,
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, rotary_pct=0.5, tie_word_embeddings=False,
    ),
}


_BUILT = {}


def _build(name, tmp_path_factory):
    """(name, HF torch model, folder) for a tiny random model with every parameter perturbed
    (so norm scales and biases are not their trivial initial values)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[name](), dtype=torch.float32).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.2 * torch.randn_like(parameter))
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        _BUILT[name] = name, model, folder
    return _BUILT[name]


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def checkpoint(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory)


def _tokens(batch, length, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int32)


def test_logits_match_transformers(checkpoint):
    name, hf_model, folder = checkpoint
    loaded = load_pretrained(str(folder))
    tokens = _tokens(3, 11)
    ours = np.asarray(loaded.apply_fn(loaded.params, jnp.asarray(tokens)).logits)
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(tokens).long()).logits.numpy()
    delta = np.abs(ours - theirs).max()
    print(f"\n{name}: max |Δ logits| = {delta:.2e} (logit scale {np.abs(theirs).max():.1f})")
    assert delta <= 1e-4


def test_greedy_generation_matches_transformers(checkpoint):
    """20 greedy tokens from left-padded prompts through our jitted KV-cache sampler equal HF `generate`."""
    name, hf_model, folder = checkpoint
    loaded = load_pretrained(str(folder))
    prompt = _tokens(3, 6, seed=1)
    mask = np.ones_like(prompt, dtype=bool)
    mask[1, :2] = False  # left padding
    prompt = np.where(mask, prompt, 0)
    sampling = SamplingConfig(max_new_tokens=20, greedy=True, eos_id=None, pad_id=0)
    cache = loaded.config.init_cache(3, prompt.shape[1] + 20)
    ours = jax.jit(lambda p: generate(loaded.apply_fn, p, jnp.asarray(prompt), jnp.asarray(mask),
                                      jax.random.key(0), sampling, cache))(loaded.params)
    with torch.no_grad():
        theirs = hf_model.generate(
            torch.from_numpy(prompt).long(), attention_mask=torch.from_numpy(mask).long(), do_sample=False,
            max_new_tokens=20, min_new_tokens=20, pad_token_id=0, eos_token_id=None,
        )[:, prompt.shape[1]:].numpy()
    np.testing.assert_array_equal(np.asarray(ours.tokens), theirs)


def test_cached_logits_equal_uncached(checkpoint):
    name, _, folder = checkpoint
    loaded = load_pretrained(str(folder))
    apply_fn = jax.jit(loaded.apply_fn)
    tokens = jnp.asarray(_tokens(2, 9, seed=2))
    full = apply_fn(loaded.params, tokens).logits
    cache = loaded.config.init_cache(2, 12)
    key_mask = jnp.ones((2, 12), bool)
    step = apply_fn(loaded.params, tokens[:, :4], attention_mask=key_mask, cache=cache)
    pieces = [step.logits]
    for t in range(4, 9):
        step = apply_fn(loaded.params, tokens[:, t : t + 1], attention_mask=key_mask, cache=step.cache)
        pieces.append(step.logits)
    delta = np.abs(np.concatenate(pieces, 1) - np.asarray(full)).max()
    print(f"\n{name}: cached vs uncached max |Δ logits| = {delta:.2e}")
    assert delta <= 1e-5


@pytest.mark.parametrize("name", ["gpt2", "llama_untied_gqa_theta5e5", "gpt_neox"])
@pytest.mark.parametrize("dtype, param_dtype", [("bfloat16", "float32"), ("bfloat16", "bfloat16")])
def test_bfloat16_logits_close_to_float32(name, dtype, param_dtype, tmp_path_factory):
    _, _, folder = _build(name, tmp_path_factory)
    reference = load_pretrained(str(folder))
    low = load_pretrained(str(folder), dtype=dtype, param_dtype=param_dtype)
    assert jax.tree.leaves(low.params)[0].dtype == jnp.dtype(param_dtype)
    tokens = jnp.asarray(_tokens(2, 10, seed=3))
    exact = np.asarray(reference.apply_fn(reference.params, tokens).logits)
    approx = np.asarray(low.apply_fn(low.params, tokens).logits)
    relative = np.abs(approx - exact).max() / np.abs(exact).max()
    print(f"\n{name} {dtype}/{param_dtype}: max |Δ| / max |logit| = {relative:.2e}")
    assert relative < 0.05
    assert (approx.argmax(-1) == exact.argmax(-1)).mean() > 0.9
