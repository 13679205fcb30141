"""Tiny stand-ins for the NL tests (imported by the other test_nl_* modules): a byte-level BPE
tokenizer trained on a few hundred corpus texts, a tiny random Llama policy folder written
with `save_pretrained`, and tiny random BERT / DistilBERT reward-model folders."""

from __future__ import annotations

import functools
from pathlib import Path

from rlbias_jax.tasks.corpus import load_corpus

EOS = "<|endoftext|>"
WORDS = ("the a an and but not never film movie good great bad awful boring wonderful love hate is was it this "
         "that of to in plot acting story fun dull so very really no best worst").split()


@functools.lru_cache(maxsize=1)
def corpus_sample() -> tuple[str, ...]:
    return tuple(load_corpus("vader_movie_reviews")[:600])


@functools.lru_cache(maxsize=None)
def bpe_tokenizer(vocab_size: int = 400):
    """A GPT-2-style byte-level BPE (transformers fast tokenizer) trained on corpus texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = list(corpus_sample()) + [" ".join(WORDS)] * 20 + ["$ # - So: 7/10 review: 1/10: 10/10:"] * 20
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)


def tiny_policy_folder(folder: Path, n_layer: int = 2) -> Path:
    """A tiny random Llama (tied embeddings) with the BPE tokenizer, as an HF folder."""
    import torch
    import transformers

    tokenizer = bpe_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layer,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def wordpiece_vocab() -> list[str]:
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ",", "!", "$", "#", "-", ":", "/"]


def tiny_classifier_folder(folder: Path, kind: str, seed: int = 0):
    """A tiny random BERT or DistilBERT sequence classifier (every parameter perturbed) with a
    WordPiece tokenizer; returns (folder, torch model, HF tokenizer)."""
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(wordpiece_vocab()) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    labels = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=len(wordpiece_vocab()), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=48, max_position_embeddings=64, **labels)
        model = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.DistilBertConfig(vocab_size=len(wordpiece_vocab()), dim=32, n_layers=2, n_heads=4,
                                               hidden_dim=48, max_position_embeddings=64, **labels)
        model = transformers.DistilBertForSequenceClassification(config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer
