"""Extractability of the NL prefix tasks (SPEC §5–§6) with the pretrained policy as the probe.

The same online code as the toy experiment (`OnlineCode`, one compiled program for
both probes × all probe seeds [× all layers]) on the NL probing sets of
`rlbias_jax.tasks.nl` (t-probe: both vs s-only; s-probe: s-only vs neither):

- "finetune" (the paper; "policy" is the same thing here, since the policy *is* the
  pretrained model): the whole pretrained LM plus a fresh linear head, read out at the
  last prompt token, fine-tuned per block. Each probe seed draws a new head.
- "frozen": linear or MLP probes on the last-token hidden state of every layer of the
  frozen pretrained LM (features computed once per probing set and standardised).
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax.config import Config
from rlbias_jax.models.heads import SequenceClassifier
from rlbias_jax.probing.blocks import block_ends
from rlbias_jax.probing.extractability import PROBES, ExtractabilityResult, frozen_lanes, make_schedule, model_lanes
from rlbias_jax.probing.online_code import OnlineCode
from rlbias_jax.probing.probes import ProbeModel, frozen_probe, layer_features
from rlbias_jax.tasks import nl as nl_tasks


def pretrained_probe(lm_module, lm_params, seq_len: int, num_classes: int = 2) -> ProbeModel:
    """SequenceClassifier(pretrained LM): the LM starts from `lm_params`, the head from the key."""
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


def measure_nl_extractability(config: Config, key: jax.Array, setup, task_data: dict[int, nl_tasks.NLTaskData],
                              *, progress: Callable[[str], None] = print) -> ExtractabilityResult:
    """MDL(s), MDL(t) and their ratio for every NL task, probing the pretrained policy LM."""
    mode = "frozen" if config.probe.mode == "frozen" else "finetune"
    loaded = setup.loaded
    size, prompt_len = config.probe.probe_size, config.task.prompt_len
    ends = block_ends(size)
    if mode == "frozen":
        probe = frozen_probe(loaded.config.d_model, kind=config.probe.frozen_head, hidden=config.probe.frozen_mlp_width)
    else:
        probe = pretrained_probe(loaded.module, loaded.params, prompt_len)
    code = OnlineCode(probe, make_schedule(config), ends)
    lm_apply = lambda params, tokens, **kw: loaded.module.apply({"params": params}, tokens, **kw)  # noqa: E731
    result = ExtractabilityResult(config.probe.min_accuracy)
    for task_id in config.task.task_ids:
        started = time.perf_counter()
        order_key, init_key, train_key = jax.random.split(jax.random.fold_in(key, task_id), 3)
        keys = {"order": order_key, "init": init_key, "train": train_key}
        sets = [task_data[task_id].probing_set(probe_name, size) for probe_name in PROBES]
        tokens, labels = jnp.asarray(np.stack([s[0] for s in sets])), jnp.asarray(np.stack([s[1] for s in sets]))
        if mode == "frozen":
            features = [layer_features(lm_apply, loaded.params, tokens[p], batch_size=config.probe.eval_batch_size)
                        for p in range(len(PROBES))]

            def features_fn(seed, set_tokens, _tokens=tokens, _features=features):
                # the pretrained model is the same for every probe seed: features are computed once per set
                del seed
                return _features[0] if bool(jnp.array_equal(set_tokens, _tokens[0])) else _features[1]

            inputs, labels, infos, lanes = frozen_lanes(keys, tokens, labels, config.probe.seeds, features_fn)
        else:
            inputs, labels, infos, lanes = model_lanes(keys, tokens, labels, config.probe.seeds)
        output = jax.block_until_ready(code(inputs, labels, lanes))
        progress(result.add_task(task_id, nl_tasks.TASK_NAMES[task_id], mode, infos, code, output, started))
    return result
