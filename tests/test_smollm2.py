"""The bundled SmolLM2-135M-Instruct (GGUF Q4_1) against transformers' own GGUF path (dequantised to torch fp32):
logits on a fixed sentence, greedy continuation, tokenizer ids; and the conversion cache."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it to load a GGUF

from rlbias_jax.models.loading import bundled_model_path, load_pretrained  # noqa: E402
from rlbias_jax.models.sampling import generate  # noqa: E402

pytestmark = pytest.mark.slow

SENTENCE = "The quick brown fox jumps over the lazy dog."
TOKENIZER_STRINGS = [
    "Hello, world! It's a plain ASCII sentence.",
    "In 2023, 1234567 apples cost $89.99 (or 3.5e-4 each).",
    "Café naïve résumé Zürich — señor, Ångström, Łódź",
    "emoji 😀🎉 and skin tones 👍🏽, flags 🇫🇷",
    "  leading spaces\n\nnew lines\ttabs   trailing ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def gguf_path():
    try:
        return bundled_model_path("smollm2")
    except ValueError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def ours(gguf_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("rlbias_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLBIAS_CACHE", str(cache))
        start = time.perf_counter()
        first = load_pretrained("smollm2")
        first_seconds = time.perf_counter() - start
        start = time.perf_counter()
        second = load_pretrained("smollm2")  # from the conversion cache
        second_seconds = time.perf_counter() - start
    print(f"\nSmolLM2 load: first {first_seconds:.1f}s (dequantise + convert), second {second_seconds:.1f}s (cached)")
    return first, second, first_seconds, second_seconds


@pytest.fixture(scope="module")
def reference(gguf_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return model, tokenizer


def test_config_and_special_tokens(ours):
    loaded = ours[0]
    config = loaded.config
    assert (config.n_layer, config.n_head, config.n_kv_head, config.d_model, config.vocab_size) == (30, 9, 3, 576, 49152)
    assert config.rope_theta == 100000.0 and config.tie_word_embeddings
    assert loaded.tokenizer.convert_ids_to_tokens(loaded.eos_id) == "<|im_end|>"


def test_second_load_comes_from_the_cache(ours):
    first, second, first_seconds, second_seconds = ours
    assert second_seconds < first_seconds / 2
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_logits_match_transformers_gguf(ours, reference):
    loaded, (model, tokenizer) = ours[0], reference
    ids = np.asarray(tokenizer(SENTENCE)["input_ids"])[None]
    logits = np.asarray(jax.jit(loaded.apply_fn)(loaded.params, jnp.asarray(ids)).logits)
    with torch.no_grad():
        expected = model(torch.from_numpy(ids).long()).logits.numpy()
    delta = np.abs(logits - expected).max()
    print(f"\nSmolLM2 GGUF: max |Δ logits| = {delta:.2e} over {ids.shape[1]} tokens (logit scale {np.abs(expected).max():.1f})")
    assert delta <= 1e-3


def test_greedy_continuation_matches_transformers(ours, reference):
    loaded, (model, tokenizer) = ours[0], reference
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True)
    prompt = np.asarray(prompt if isinstance(prompt, list) else prompt["input_ids"], np.int32)[None]
    sampling = loaded.sampling_config(max_new_tokens=8, greedy=True)
    cache = loaded.config.init_cache(1, prompt.shape[1] + 8)
    out = generate(loaded.apply_fn, loaded.params, jnp.asarray(prompt), jnp.ones(prompt.shape, bool),
                   jax.random.key(0), sampling, cache)
    with torch.no_grad():
        expected = model.generate(torch.from_numpy(prompt).long(), do_sample=False, max_new_tokens=8,
                                  eos_token_id=loaded.eos_id, pad_token_id=loaded.pad_id)[0, prompt.shape[1]:].numpy()
    ours_tokens = np.asarray(out.tokens[0])[: len(expected)]
    print(f"\nSmolLM2 greedy: {tokenizer.decode(ours_tokens)!r}")
    np.testing.assert_array_equal(ours_tokens, expected)


@pytest.mark.parametrize("text", TOKENIZER_STRINGS)
def test_tokenizer_ids_match_transformers_gguf(ours, reference, text):
    loaded, (_, tokenizer) = ours[0], reference
    ids = loaded.tokenizer(text)["input_ids"]
    assert ids == tokenizer(text)["input_ids"]
    assert loaded.tokenizer.decode(ids) == text


def test_digits_are_split_one_per_token(ours):
    """llama.cpp's `smollm` pre-tokenizer (and SmolLM2's own tokenizer.json) split digits individually."""
    tokenizer = ours[0].tokenizer
    assert tokenizer.convert_ids_to_tokens(tokenizer("2023")["input_ids"]) == ["2", "0", "2", "3"]
