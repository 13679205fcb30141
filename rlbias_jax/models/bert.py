"""BERT and DistilBERT sequence classifiers in Flax (Hugging Face `BertForSequenceClassification` /
`DistilBertForSequenceClassification` semantics), for reward models such as `lvwerra/distilbert-imdb`.

Both are post-LayerNorm bidirectional encoders with learned absolute positions and
exact (erf) GELU; they differ only at the edges: BERT adds token-type embeddings and
reads out through its pooler (Dense + tanh on [CLS]), DistilBERT through
`pre_classifier` (Dense + ReLU on [CLS]). Dropout is omitted (inference only).

Parameter names follow the Hugging Face checkpoints with the `bert.` / `distilbert.`
prefix dropped; `load_classifier(folder)` maps them with one explicit name list per
architecture and checks every shape (`ModelLoadError` names the tensor).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlbias_jax.models.loading import ModelLoadError, convert_tensors, load_tokenizer, read_checkpoint

KINDS = ("bert", "distilbert")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    kind: str  # "bert" or "distilbert"
    vocab_size: int
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    ff_dim: int = 3072
    max_len: int = 512
    type_vocab_size: int = 2  # BERT only
    layer_norm_eps: float = 1e-12
    num_labels: int = 2
    activation: str = "gelu"  # "gelu" (erf) or "gelu_new"/"gelu_pytorch_tanh" (tanh approximation)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"EncoderConfig.kind={self.kind!r} is not one of {KINDS}")


def _gelu(x, activation: str):
    return nn.gelu(x, approximate=activation in ("gelu_new", "gelu_pytorch_tanh"))


class EncoderLayer(nn.Module):
    """x = LN(x + attention(x)); x = LN(x + FFN(x)). Names follow BERT (DistilBERT is renamed on load)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, x, allowed):
        config = self.config
        batch, length, width = x.shape
        head_dim = width // config.n_head
        shape = (batch, length, config.n_head, head_dim)
        query = nn.Dense(width, name="query")(x).reshape(shape)
        key = nn.Dense(width, name="key")(x).reshape(shape)
        value = nn.Dense(width, name="value")(x).reshape(shape)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / jnp.sqrt(jnp.float32(head_dim))
        scores = jnp.where(allowed[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), value).reshape(batch, length, width)
        x = nn.LayerNorm(config.layer_norm_eps, name="attention_norm")(x + nn.Dense(width, name="attention_out")(attended))
        hidden = _gelu(nn.Dense(config.ff_dim, name="intermediate")(x), config.activation)
        return nn.LayerNorm(config.layer_norm_eps, name="output_norm")(x + nn.Dense(width, name="output")(hidden))


class SequenceClassifierEncoder(nn.Module):
    """tokens int32[B, T], attention_mask bool[B, T] (true on real tokens) -> logits float32[B, num_labels]."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, tokens, attention_mask=None, token_types=None):
        config = self.config
        batch, length = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), bool)
        positions = jnp.arange(length)[None, :]
        x = nn.Embed(config.vocab_size, config.d_model, name="word_embeddings")(tokens)
        x = x + nn.Embed(config.max_len, config.d_model, name="position_embeddings")(positions)
        if config.kind == "bert":
            types = jnp.zeros_like(tokens) if token_types is None else token_types
            x = x + nn.Embed(config.type_vocab_size, config.d_model, name="token_type_embeddings")(types)
        x = nn.LayerNorm(config.layer_norm_eps, name="embeddings_norm")(x)
        for layer in range(config.n_layer):
            x = EncoderLayer(config, name=f"layer_{layer}")(x, attention_mask.astype(bool))
        first = x[:, 0]
        if config.kind == "bert":
            pooled = jnp.tanh(nn.Dense(config.d_model, name="pooler")(first))
        else:
            pooled = nn.relu(nn.Dense(config.d_model, name="pre_classifier")(first))
        return nn.Dense(config.num_labels, name="classifier")(pooled).astype(jnp.float32)


# LOADING FROM A HUGGING FACE FOLDER

NameMap = list[tuple[str, str, bool]]  # (HF tensor name, our "a/b/c" path, transpose)


def _dense(hf: str, ours: str) -> NameMap:
    return [(f"{hf}.weight", f"{ours}/kernel", True), (f"{hf}.bias", f"{ours}/bias", False)]


def _norm(hf: str, ours: str) -> NameMap:
    return [(f"{hf}.weight", f"{ours}/scale", False), (f"{hf}.bias", f"{ours}/bias", False)]


def _bert_names(config: EncoderConfig) -> NameMap:
    names = [("bert.embeddings.word_embeddings.weight", "word_embeddings/embedding", False),
             ("bert.embeddings.position_embeddings.weight", "position_embeddings/embedding", False),
             ("bert.embeddings.token_type_embeddings.weight", "token_type_embeddings/embedding", False)]
    names += _norm("bert.embeddings.LayerNorm", "embeddings_norm")
    for i in range(config.n_layer):
        hf, ours = f"bert.encoder.layer.{i}", f"layer_{i}"
        for part in ("query", "key", "value"):
            names += _dense(f"{hf}.attention.self.{part}", f"{ours}/{part}")
        names += _dense(f"{hf}.attention.output.dense", f"{ours}/attention_out")
        names += _norm(f"{hf}.attention.output.LayerNorm", f"{ours}/attention_norm")
        names += _dense(f"{hf}.intermediate.dense", f"{ours}/intermediate")
        names += _dense(f"{hf}.output.dense", f"{ours}/output")
        names += _norm(f"{hf}.output.LayerNorm", f"{ours}/output_norm")
    return names + _dense("bert.pooler.dense", "pooler") + _dense("classifier", "classifier")


def _distilbert_names(config: EncoderConfig) -> NameMap:
    names = [("distilbert.embeddings.word_embeddings.weight", "word_embeddings/embedding", False),
             ("distilbert.embeddings.position_embeddings.weight", "position_embeddings/embedding", False)]
    names += _norm("distilbert.embeddings.LayerNorm", "embeddings_norm")
    for i in range(config.n_layer):
        hf, ours = f"distilbert.transformer.layer.{i}", f"layer_{i}"
        for theirs, mine in (("q_lin", "query"), ("k_lin", "key"), ("v_lin", "value"), ("out_lin", "attention_out")):
            names += _dense(f"{hf}.attention.{theirs}", f"{ours}/{mine}")
        names += _norm(f"{hf}.sa_layer_norm", f"{ours}/attention_norm")
        names += _dense(f"{hf}.ffn.lin1", f"{ours}/intermediate") + _dense(f"{hf}.ffn.lin2", f"{ours}/output")
        names += _norm(f"{hf}.output_layer_norm", f"{ours}/output_norm")
    return names + _dense("pre_classifier", "pre_classifier") + _dense("classifier", "classifier")


def _canonical(name: str) -> str:
    # checkpoints written before transformers 4 name LayerNorm parameters gamma/beta
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def encoder_config(folder: Path) -> EncoderConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"reward model config {path} does not exist")
    try:
        hf = json.loads(path.read_text())
    except ValueError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None
    kind = hf.get("model_type")
    if kind == "bert":
        return EncoderConfig(
            kind="bert", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"], ff_dim=hf["intermediate_size"], max_len=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            num_labels=len(hf.get("id2label", {0: 0, 1: 1})), activation=hf.get("hidden_act", "gelu"),
        )
    if kind == "distilbert":
        if hf.get("sinusoidal_pos_embds"):
            raise ModelLoadError(f"{path}: sinusoidal_pos_embds=true is not supported")
        return EncoderConfig(
            kind="distilbert", vocab_size=hf["vocab_size"], d_model=hf["dim"], n_layer=hf["n_layers"],
            n_head=hf["n_heads"], ff_dim=hf["hidden_dim"], max_len=hf["max_position_embeddings"],
            layer_norm_eps=1e-12, num_labels=len(hf.get("id2label", {0: 0, 1: 1})), activation=hf.get("activation", "gelu"),
        )
    raise ModelLoadError(f"{path}: model_type {kind!r} is not a supported reward model (supported: {', '.join(KINDS)})")


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedClassifier:
    module: SequenceClassifierEncoder
    params: dict
    config: EncoderConfig
    tokenizer: object
    positive_index: int  # the class whose logit is the reward
    source: str

    def logits(self, params, tokens, attention_mask):
        return self.module.apply({"params": params}, tokens, attention_mask)


def positive_label_index(folder: Path) -> int:
    """The index of the POSITIVE class from config.json's id2label (1 when labels are generic)."""
    hf = json.loads((Path(folder) / "config.json").read_text())
    for index, label in (hf.get("id2label") or {}).items():
        if str(label).lower() in ("positive", "pos", "label_positive"):
            return int(index)
    return 1


def load_classifier(folder: str | Path) -> LoadedClassifier:
    """A BERT/DistilBERT sequence classifier from a Hugging Face folder (config.json + safetensors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"reward model folder {folder} does not exist")
    config = encoder_config(folder)
    module = SequenceClassifierEncoder(config)
    names = _bert_names(config) if config.kind == "bert" else _distilbert_names(config)
    tensors = {_canonical(name): value for name, value in read_checkpoint(folder).items()}
    # tensors the classifier does not use (position_ids buffers, MLM heads) are ignored
    params = convert_tensors(module, names, tensors, ignored=".*", param_dtype=jnp.float32)
    tokenizer = load_tokenizer(folder)
    if tokenizer is None:
        raise ModelLoadError(f"the reward model folder {folder} has no tokenizer files (vocab.txt / tokenizer.json)")
    return LoadedClassifier(module, params, config, tokenizer, positive_label_index(folder), str(folder))
