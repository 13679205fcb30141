"""Probe models for the online code (SPEC §5), behind one small interface.

A `ProbeModel` is a pair of pure functions, `init(key) -> params` and
`apply(params, inputs, dropout_key) -> logits[B, K]` (`dropout_key=None` means
evaluation: no dropout), so that the online-code trainer never needs to know
which probe it trains:

- `finetune_probe`: the toy original, a separate 2-layer transformer encoder
  (post-LN, ReLU, dropout 0.1, sinusoidal positions, bidirectional) read out at
  the last position through dropout 0.5 → Linear → tanh → Linear.
- `policy_probe`: the RL policy's own architecture and initialisation,
  `SequenceClassifier(GPT2(config))`, optionally starting from given LM weights.
- `pretrained_probe`: a pretrained LM plus a fresh linear head, fine-tuned whole (NL).
- `frozen_probe`: a linear or one-hidden-layer MLP probe on fixed feature vectors
  (the hidden state of one layer of a frozen model, see `layer_features`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.heads import SequenceClassifier

Params = Any


@dataclasses.dataclass(frozen=True, eq=False)
class ProbeModel:
    """A probe as two pure functions (hashed by identity, so it can be a static argument)."""

    name: str
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array, jax.Array | None], jax.Array]
    num_classes: int = 2


# FINE-TUNE MODE: THE TOY ORIGINAL ENCODER


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
    """Vaswani et al. positions, PyTorch-tutorial layout (sin on even, cos on odd dims): [length, width]."""
    position = np.arange(length)[:, None]
    rate = np.exp(np.arange(0, width, 2) * (-math.log(10000.0) / width))
    table = np.zeros((length, width), dtype=np.float32)
    table[:, 0::2] = np.sin(position * rate)
    table[:, 1::2] = np.cos(position * rate)[:, : width // 2]
    return table


def _symmetric_uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class EncoderLayer(nn.Module):
    """PyTorch `nn.TransformerEncoderLayer` (post-LN, ReLU) in Flax."""

    width: int
    heads: int
    ff: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        attention = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, qkv_features=self.width, dropout_rate=self.dropout, name="attention"
        )(x, x, deterministic=deterministic)
        x = nn.LayerNorm(epsilon=1e-5, name="norm1")(x + nn.Dropout(self.dropout)(attention, deterministic))
        hidden = nn.Dropout(self.dropout)(nn.relu(nn.Dense(self.ff, name="linear1")(x)), deterministic)
        hidden = nn.Dense(self.width, name="linear2")(hidden)
        return nn.LayerNorm(epsilon=1e-5, name="norm2")(x + nn.Dropout(self.dropout)(hidden, deterministic))


class EncoderClassifier(nn.Module):
    """The toy fine-tune probe of SPEC §5: tokens int[B, T] -> logits [B, num_classes]."""

    vocab_size: int
    width: int = 256
    heads: int = 4
    ff: int = 2048
    layers: int = 2
    dropout: float = 0.1
    head_dropout: float = 0.5
    num_classes: int = 2

    @nn.compact
    def __call__(self, tokens: jax.Array, deterministic: bool = True) -> jax.Array:
        length = tokens.shape[1]
        # The PyTorch tutorial's embedding init and sqrt(width) scaling.
        embed = nn.Embed(self.vocab_size, self.width, embedding_init=_symmetric_uniform(0.1), name="embedding")
        x = embed(tokens) * math.sqrt(self.width) + sinusoidal_positions(length, self.width)
        x = nn.Dropout(self.dropout)(x, deterministic)
        for layer in range(self.layers):
            x = EncoderLayer(self.width, self.heads, self.ff, self.dropout, name=f"layer_{layer}")(x, deterministic)
        last = nn.Dropout(self.head_dropout)(x[:, -1], deterministic)
        last = jnp.tanh(nn.Dense(self.width, name="dense")(last))
        return nn.Dense(self.num_classes, name="out_proj")(last)


def finetune_probe(
    vocab_size: int,
    seq_len: int,
    *,
    width: int = 256,
    heads: int = 4,
    ff: int = 2048,
    layers: int = 2,
    dropout: float = 0.1,
    head_dropout: float = 0.5,
    num_classes: int = 2,
) -> ProbeModel:
    """A freshly initialised encoder classifier per block (the original toy probe)."""
    module = EncoderClassifier(vocab_size, width, heads, ff, layers, dropout, head_dropout, num_classes)
    dummy = jnp.zeros((1, seq_len), jnp.int32)

    def apply(params, tokens, dropout_key):
        if dropout_key is None:
            return module.apply(params, tokens, deterministic=True)
        return module.apply(params, tokens, deterministic=False, rngs={"dropout": dropout_key})

    return ProbeModel("finetune", lambda key: module.init(key, dummy), apply, num_classes)


# POLICY MODE: THE RL POLICY'S ARCHITECTURE AS A SEQUENCE CLASSIFIER


def policy_probe(
    model_config: GPT2Config, seq_len: int, *, lm_params: Params | None = None, num_classes: int = 2
) -> ProbeModel:
    """`SequenceClassifier(GPT2(model_config))` read out at the last position.

    With `lm_params=None` the whole model is freshly initialised from the key, as
    the RL policy is (toy experiment); otherwise the LM starts from `lm_params`
    (a pretrained policy) and only the classification head is drawn from the key.
    """
    module = SequenceClassifier(GPT2(model_config), num_classes=num_classes)
    dummy = jnp.zeros((1, seq_len), jnp.int32)

    def init(key):
        params = module.init(key, dummy)
        if lm_params is not None:
            params = {"params": {**params["params"], "lm": lm_params}}
        return params

    def apply(params, tokens, dropout_key):
        del dropout_key  # GPT-2 here has no dropout
        return module.apply(params, tokens)

    return ProbeModel("policy", init, apply, num_classes)


def pretrained_probe(lm_module, lm_params: Params, seq_len: int, num_classes: int = 2) -> ProbeModel:
    """`SequenceClassifier(pretrained LM)`: the LM starts from `lm_params`, the head from the key.

    The NL experiment's fine-tune mode (SPEC §6): every probe seed draws a new head."""
    module = SequenceClassifier(lm_module, num_classes=num_classes)
    dummy = jnp.zeros((1, seq_len), jnp.int32)

    def init(key):
        head = jax.eval_shape(module.init, key, dummy)["params"]["score"]
        kernel = jax.nn.initializers.lecun_normal()(key, head["kernel"].shape, jnp.float32)
        return {"params": {"lm": lm_params, "score": {"kernel": kernel, "bias": jnp.zeros(head["bias"].shape)}}}

    def apply(params, tokens, dropout_key):
        del dropout_key
        return module.apply(params, tokens)

    return ProbeModel("finetune", init, apply, num_classes)


# FROZEN MODE: PROBES ON FIXED FEATURES


class MLPProbe(nn.Module):
    """features [B, D] -> logits [B, K]; `hidden = 0` is a linear probe. The output layer starts at
    zero, so an untrained probe is the uniform code."""

    hidden: int
    num_classes: int = 2

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        if self.hidden:
            features = nn.relu(nn.Dense(self.hidden, name="hidden")(features))
        # A zero read-out: before any training the probe sends every label with the uniform code.
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="out")(features)


def frozen_probe(feature_dim: int, *, kind: str = "linear", hidden: int = 256, num_classes: int = 2) -> ProbeModel:
    """A linear or MLP probe on feature vectors of size `feature_dim`."""
    if kind not in ("linear", "mlp"):
        raise ValueError(f"unknown frozen probe {kind!r}; known: linear, mlp")
    module = MLPProbe(hidden if kind == "mlp" else 0, num_classes)
    dummy = jnp.zeros((1, feature_dim), jnp.float32)
    return ProbeModel(
        f"frozen-{kind}", lambda key: module.init(key, dummy), lambda params, x, _key: module.apply(params, x), num_classes
    )


def layer_features(
    lm_apply: Callable[..., Any], lm_params: Params, tokens: jax.Array, *, batch_size: int = 512
) -> jax.Array:
    """Hidden states at the last position of every layer of a frozen LM: float32[L + 1, N, D].

    `lm_apply(params, tokens, return_layer_hidden=True)` must return an object with
    `layer_hidden` (embeddings first), as every LM of `rlbias_jax.models` does; pass
    the same `lm_apply` object across calls to reuse its compilation. Each layer's
    features are then standardised per dimension over the N inputs (inputs only,
    never labels), so that one learning rate suits every layer.
    """
    chex.assert_rank(tokens, 2)
    parts = [_last_position_features(lm_apply, lm_params, tokens[i : i + batch_size])
             for i in range(0, tokens.shape[0], batch_size)]
    stacked = jnp.concatenate(parts, axis=1)
    mean = stacked.mean(axis=1, keepdims=True)
    std = stacked.std(axis=1, keepdims=True)
    return (stacked - mean) / jnp.maximum(std, 1e-6)


@functools.partial(jax.jit, static_argnums=0)
def _last_position_features(lm_apply, lm_params, tokens):
    out = lm_apply(lm_params, tokens, return_layer_hidden=True)
    return jnp.stack([hidden[:, -1].astype(jnp.float32) for hidden in out.layer_hidden])
