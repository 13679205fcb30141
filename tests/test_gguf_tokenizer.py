"""Tokenizers rebuilt from GGUF metadata: a small byte-level BPE trained here, written into GGUF files
with llama.cpp's pre-tokenizer names, against reference tokenizers built directly with `tokenizers`."""

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

import gguf

from rlbias_jax.models.gguf_loader import _LLAMA3_SPLIT, _QWEN2_SPLIT, open_reader, tokenizer_from_gguf

CORPUS = [
    "In 2023 the price rose from 2020 levels: 1999, 2000, 2023, 12345 and 2023 again.",
    "Café, naïve, résumé; Zürich and señor. Ça va? Über alles.",
    "Emoji 😀🎉 👍🏽 appear here 😀 and here 🎉.",
    "The quick brown fox jumps over the lazy dog. The dog sleeps.\n\nNew paragraph\twith tabs.",
    "don't can't won't I'm you're we've they'll she'd",
] * 20
STRINGS = [
    "In 2023, the 12345 foxes cost $89.99!",
    "Café naïve — Zürich 😀👍🏽 ok",
    "  two leading spaces\n\nand lines\ttab",
    "<s>special</s> tokens stay whole <|extra|>",
    "I'm sure they'll say don't",
]
SPECIALS = ["</s>", "<s>", "<|extra|>"]


@pytest.fixture(scope="module")
def trained():
    """A 500-token byte-level BPE whose merges include multi-digit tokens such as '20' and '2023'."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    import json

    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(tokenizer.to_str())["model"]["merges"]]
    assert "20" in vocab, "the corpus should teach a multi-digit merge"
    return tokens, merges


def _write(path, tokens, merges, pre, add_bos):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<s>"))
    writer.add_eos_token_id(tokens.index("</s>"))
    writer.add_add_bos_token(add_bos)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _reference(tokens, merges, pre_tokenizer):
    reference = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                     merges=[tuple(m.split(" ")) for m in merges]))
    reference.pre_tokenizer = pre_tokenizer
    reference.add_special_tokens(SPECIALS)
    return reference


BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
RAW_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
PRE_TOKENIZERS = {
    # llama.cpp's "smollm": single digits split off, then GPT-2's regex (SmolLM2's own tokenizer.json)
    "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), BYTE_LEVEL]),
    "gpt-2": BYTE_LEVEL,
    "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_QWEN2_SPLIT), "isolated"), RAW_BYTE_LEVEL]),
    "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), "isolated"), RAW_BYTE_LEVEL]),
}


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_byte_level_tokenizer_matches_reference(trained, pre, tmp_path):
    tokens, merges = trained
    path = _write(tmp_path / f"{pre}.gguf", tokens, merges, pre, add_bos=False)
    ours = tokenizer_from_gguf(open_reader(path), path)
    reference = _reference(tokens, merges, PRE_TOKENIZERS[pre])
    for text in STRINGS:
        ids = ours(text)["input_ids"]
        assert ids == reference.encode(text).ids, (pre, text)
        assert ours.decode(ids) == text
    assert ours.eos_token == "</s>" and ours.bos_token == "<s>"


def test_pre_tokenizers_differ_where_llama_cpp_does(trained, tmp_path):
    """Guard that the cases above are not vacuous: digit handling differs between the pre-tokenizers."""
    tokens, merges = trained
    pieces = {}
    for pre in ("smollm", "gpt-2", "llama-bpe"):
        path = _write(tmp_path / f"{pre}.gguf", tokens, merges, pre, add_bos=False)
        tokenizer = tokenizer_from_gguf(open_reader(path), path)
        pieces[pre] = tokenizer.convert_ids_to_tokens(tokenizer("2023 12345")["input_ids"])
    assert pieces["smollm"] == ["2", "0", "2", "3", "Ġ", "1", "2", "3", "4", "5"]
    assert len(pieces["gpt-2"]) < len(pieces["smollm"])
    assert pieces["llama-bpe"] != pieces["gpt-2"]  # groups of at most three digits


def test_add_bos_token(trained, tmp_path):
    tokens, merges = trained
    path = _write(tmp_path / "bos.gguf", tokens, merges, "gpt-2", add_bos=True)
    ours = tokenizer_from_gguf(open_reader(path), path)
    ids = ours("hello")["input_ids"]
    assert ids[0] == tokens.index("<s>") and ids[1:] == _reference(tokens, merges, BYTE_LEVEL).encode("hello").ids


def test_unknown_pre_tokenizer_warns_and_gives_none(trained, tmp_path):
    tokens, merges = trained
    path = _write(tmp_path / "odd.gguf", tokens, merges, "some-future-model", add_bos=False)
    with pytest.warns(UserWarning, match="some-future-model"):
        assert tokenizer_from_gguf(open_reader(path), path) is None
