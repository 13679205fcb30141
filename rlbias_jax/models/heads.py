"""Heads on top of a causal LM: a scalar value head (shared trunk, for PPO) and a
sequence-classification head (last-token readout, for probes and reward models)."""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rlbias_jax.models.kv_cache import KVCache


@flax.struct.dataclass
class PolicyOutput:
    logits: jax.Array  # [B, T, V] float32
    values: jax.Array  # [B, T] float32: predicted return from the state that emits the next token
    cache: KVCache | None = None
    features: jax.Array | None = None  # [B, T, D]: the hidden states entering block `features_layer`, if set


class PolicyValueModel(nn.Module):
    """An LM with a scalar value head on its final hidden state (shared trunk).

    With `features_layer` = k the output also carries the hidden states entering block k (a
    frozen trunk's output, which the sampler keeps so that no second trunk pass is needed).
    With `last_logits_only` the logits are those of the last position only, [B, 1, V] (all a
    sampler reads: a prompt's prefill then skips the output matmul at the other positions)."""

    lm: nn.Module
    features_layer: int | None = None
    last_logits_only: bool = False

    @nn.compact
    def __call__(self, tokens, positions=None, attention_mask=None, cache=None) -> PolicyOutput:
        keep = self.features_layer is not None
        extra = {"return_layer_hidden": True} if keep else {}
        if self.last_logits_only:
            extra["last_logits_only"] = True
        out = self.lm(tokens, positions=positions, attention_mask=attention_mask, cache=cache, **extra)
        values = nn.Dense(1, kernel_init=nn.initializers.zeros, name="value_head")(out.hidden.astype(jnp.float32))
        features = out.layer_hidden[self.features_layer] if keep else None
        return PolicyOutput(logits=out.logits, values=values[..., 0], cache=out.cache, features=features)


class SequenceClassifier(nn.Module):
    """An LM read out at the last valid position through a linear classification head."""

    lm: nn.Module
    num_classes: int = 2

    @nn.compact
    def __call__(self, tokens, attention_mask=None) -> jax.Array:
        out = self.lm(tokens, attention_mask=attention_mask)
        if attention_mask is None:
            last = out.hidden[:, -1]
        else:
            # the last true position works for left and right padding alike
            length = attention_mask.shape[1]
            last_index = length - 1 - jnp.argmax(attention_mask[:, ::-1].astype(jnp.int32), axis=1)
            last = jnp.take_along_axis(out.hidden, last_index[:, None, None], axis=1)[:, 0]
        return nn.Dense(self.num_classes, name="score")(last.astype(jnp.float32))
