"""MDL online-code probing (SPEC §5): schedule, bits, the compiled program against references."""

import csv
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbias_jax import config as config_module
from rlbias_jax.experiments import toy as experiments_toy
from rlbias_jax.experiments.runner import measure_extractability
from rlbias_jax.experiments.toy import ToyExperiment
from rlbias_jax.models.gpt2 import GPT2Config
from rlbias_jax.probing import (
    Lanes,
    OnlineCode,
    ProbeModel,
    Schedule,
    balanced_order,
    block_ends,
    frozen_probe,
    online_code_block_by_block,
    online_codelength,
    policy_probe,
    relative_extractability,
    uniform_codelength,
)
from rlbias_jax.probing import extractability
from rlbias_jax.probing.codelength import example_bits


def _lanes(labels: np.ndarray, count: int, seed: int = 0) -> Lanes:
    """`count` lanes over the probing sets in `labels` [M, N], cycling through them."""
    data_index = np.arange(count) % labels.shape[0]
    return Lanes(
        data_index=jnp.asarray(data_index, jnp.int32),
        order=jnp.asarray(np.stack([balanced_order(jax.random.key(seed + i), labels[d]) for i, d in enumerate(data_index)])),
        init_key=jax.random.split(jax.random.key(seed + 100), count),
        train_key=jax.random.split(jax.random.key(seed + 200), count),
    )


# BLOCK SCHEDULE


def test_block_ends_match_the_schedule_exactly_for_2000_and_200000():
    # floor(f * n) is exact for these n: no rounding happens
    assert block_ends(2000).tolist() == [2, 4, 8, 16, 32, 64, 125, 250, 500, 1000, 2000]
    assert block_ends(200_000).tolist() == [200, 400, 800, 1600, 3200, 6400, 12500, 25000, 50000, 100000, 200000]
    # rounding rule: floor, raised to at least i + 1 so that no block is empty
    assert block_ends(1999).tolist() == [1, 3, 7, 15, 31, 63, 124, 249, 499, 999, 1999]
    assert block_ends(500).tolist() == [1, 2, 3, 4, 8, 16, 31, 62, 125, 250, 500]
    assert block_ends(11).tolist() == list(range(1, 12))


def test_fewer_examples_than_blocks_is_an_error():
    with pytest.raises(ValueError, match="at least one example per block"):
        block_ends(10)
    with pytest.raises(config_module.ConfigError, match="probe.probe_size"):
        config_module.config_from_dict({"probe": {"probe_size": 10}})


def test_balanced_order_balances_every_prefix():
    labels = np.array([1] * 50 + [0] * 50)
    order = balanced_order(jax.random.key(0), labels)
    assert sorted(order.tolist()) == list(range(100))
    positives = np.cumsum(labels[order])
    prefix = np.arange(1, 101)
    assert np.all(np.abs(2 * positives - prefix) <= 1)  # even prefixes exactly balanced
    assert np.all(positives[1::2] == prefix[1::2] // 2)
    # unequal classes: every prefix within one example of proportional
    labels = np.array([1] * 30 + [0] * 70)
    positives = np.cumsum(labels[balanced_order(jax.random.key(1), labels)])
    assert np.all(np.abs(positives - 0.3 * prefix) <= 1.0)


def test_a_probing_set_with_one_class_is_an_error():
    with pytest.raises(ValueError, match="at least two classes"):
        balanced_order(jax.random.key(0), np.ones(100, int))


# BITS


def test_units_are_bits():
    uniform_logits = jnp.zeros((3, 4))
    np.testing.assert_allclose(example_bits(uniform_logits, jnp.array([0, 1, 3])), [2.0, 2.0, 2.0], rtol=1e-6)
    logits = jnp.log(jnp.array([[0.25, 0.75]]))
    np.testing.assert_allclose(example_bits(logits, jnp.array([0])), [2.0], rtol=1e-6)  # −log2(1/4)
    assert uniform_codelength(2000, 2) == 2000.0
    assert uniform_codelength(100, 4) == 200.0


def test_block_costs_are_sums_of_example_costs_and_block_zero_is_uniform():
    ends = block_ends(2000)
    p = 0.3
    code = online_codelength(np.full(2000, -math.log2(p)), ends, num_classes=2)
    sizes = np.diff(np.concatenate([[0], ends]))
    expected = sizes * -math.log2(p)
    expected[0] = sizes[0] * 1.0  # n1 · log2 K
    np.testing.assert_allclose(code.block_bits, expected, rtol=1e-12)
    assert code.mdl_bits == pytest.approx(expected.sum(), rel=1e-12)
    assert code.compression == pytest.approx(2000 / expected.sum(), rel=1e-12)


def _constant_probe(probability_of_one: float) -> ProbeModel:
    """Predicts p(y = 1) = probability_of_one whatever it sees; training cannot move it."""
    logits = jnp.log(jnp.array([1 - probability_of_one, probability_of_one]))
    return ProbeModel(
        "constant",
        init=lambda key: {"unused": jnp.zeros((2, 2))},
        apply=lambda params, x, key: jnp.broadcast_to(logits + 0 * jax.lax.stop_gradient(params["unused"]).sum(), (x.shape[0], 2)),
    )


@pytest.mark.parametrize("vectorize", ["lanes", "lanes_and_blocks", "none"])
def test_a_constant_probability_predictor_costs_exactly_its_bits_per_block(vectorize):
    n, p = 200, 0.8
    labels = np.stack([np.arange(n) % 2])
    code = OnlineCode(_constant_probe(p), Schedule(batch_size=16, epochs_per_block=1), block_ends(n), vectorize=vectorize)
    lanes = _lanes(labels, 2)
    output = code(jnp.zeros((1, n, 3)), jnp.asarray(labels, jnp.int32), lanes)
    for lane, codelength in enumerate(code.codelengths(output)):
        ordered = labels[0][np.asarray(lanes.order[lane])]
        starts = np.concatenate([[0], code.ends[:-1]])
        for block, (start, end) in enumerate(zip(starts, code.ends)):
            ones = ordered[start:end].sum()
            expected = (end - start) * 1.0 if block == 0 else ones * -math.log2(p) + (end - start - ones) * -math.log2(1 - p)
            assert codelength.block_bits[block] == pytest.approx(expected, rel=1e-5)


def test_a_probe_that_cannot_learn_compresses_about_one():
    rng = np.random.default_rng(0)
    n = 1000
    features = jnp.asarray(rng.normal(size=(1, n, 8)), jnp.float32)
    labels = jnp.asarray(rng.permutation(np.arange(n) % 2)[None], jnp.int32)  # independent of the features
    code = OnlineCode(frozen_probe(8), Schedule(batch_size=32, epochs_per_block=2, learning_rate=1e-3), block_ends(n))
    compression = [c.compression for c in code.codelengths(code(features, labels, _lanes(np.asarray(labels), 3)))]
    assert np.all(np.abs(np.array(compression) - 1) < 0.03), compression


# THE COMPILED PROGRAM AGAINST REFERENCES


def _logistic_reference(features, labels, order, ends, weight_decay):
    """The online code with scikit-learn logistic regression trained per block (binary, L2)."""
    from sklearn.linear_model import LogisticRegression

    x, y = features[order], labels[order]
    bits = [ends[0] * 1.0]
    for prefix, end in zip(ends[:-1], ends[1:]):
        # ours: mean CE + (λ/2)(‖w0‖² + ‖w1‖²) over 2 softmax logits = mean CE + (λ/4)‖w1 − w0‖² at the
        # optimum; sklearn: C · Σ CE + ½‖w‖²  ⇒  C = 2 / (λ · prefix). Intercepts are not penalised.
        model = LogisticRegression(C=2.0 / (weight_decay * prefix), tol=1e-10, max_iter=10_000).fit(x[:prefix], y[:prefix])
        log_probs = model.predict_log_proba(x[prefix:end])
        bits.append(-log_probs[np.arange(end - prefix), y[prefix:end]].sum() / math.log(2))
    return np.array(bits)


def test_linear_probe_matches_a_scikit_learn_online_code_within_one_percent():
    rng = np.random.default_rng(1)
    n, dim, weight_decay = 2000, 4, 0.05
    features = rng.normal(size=(n, dim))
    labels = (features @ np.array([1.5, -1.0, 0.5, 0.0]) + rng.logistic(size=n) > 0).astype(np.int32)
    ends = block_ends(n)  # block 0 holds one example of each class
    # full-batch Adam run to convergence on the (strongly convex in w) L2-regularised problem
    schedule = Schedule(batch_size=n, epochs_per_block=150, learning_rate=0.1, weight_decay=weight_decay)
    code = OnlineCode(frozen_probe(dim), schedule, ends)
    lanes = _lanes(labels[None], 2)
    output = code(jnp.asarray(features[None], jnp.float32), jnp.asarray(labels[None]), lanes)
    for lane, ours in enumerate(code.codelengths(output)):
        reference = _logistic_reference(features, labels, np.asarray(lanes.order[lane]), ends, weight_decay)
        assert ours.mdl_bits == pytest.approx(reference.sum(), rel=0.01)  # the requirement; we see ~1e-7
        np.testing.assert_allclose(ours.block_bits, reference, rtol=1e-3)


class _DropoutMLP(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic):
        x = nn.Dropout(0.5)(nn.relu(nn.Dense(8)(x)), deterministic)
        return nn.Dense(2)(x)


def _dropout_probe(dim: int) -> ProbeModel:
    module = _DropoutMLP()

    def apply(params, x, key):
        if key is None:
            return module.apply(params, x, True)
        return module.apply(params, x, False, rngs={"dropout": key})

    return ProbeModel("dropout-mlp", lambda key: module.init(key, jnp.zeros((1, dim)), True), apply)


def test_compiled_program_equals_the_block_by_block_original_with_dropout():
    # the same minibatches and dropout masks in both procedures, whatever the vectorisation
    n, dim = 60, 3
    rng = np.random.default_rng(2)
    features = jnp.asarray(rng.normal(size=(2, n, dim)), jnp.float32)
    labels = np.stack([np.asarray(features[0, :, 0]) > 0, np.arange(n) % 2]).astype(np.int32)
    probe, lanes = _dropout_probe(dim), _lanes(labels, 3)
    # epochs under vmap over blocks: blocks with fewer steps must stop updating (masked while loops)
    for schedule, modes in ((Schedule(batch_size=8, epochs_per_block=2, learning_rate=1e-2), ["lanes_and_blocks"]),
                            (Schedule(kind="fixed_steps", batch_size=8, steps_per_block=3, learning_rate=1e-2), ["lanes"])):
        reference = online_code_block_by_block(probe, schedule, block_ends(n), features, jnp.asarray(labels), lanes)
        for vectorize in modes:
            code = OnlineCode(probe, schedule, block_ends(n), vectorize=vectorize)
            output = code(features, jnp.asarray(labels), lanes)
            np.testing.assert_allclose(output.bits, reference.bits, rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(output.correct, reference.correct)


def test_epochs_schedule_counts_the_original_steps():
    ends = block_ends(2000)
    steps = Schedule(kind="epochs", batch_size=64, epochs_per_block=10).steps(ends)
    assert steps.tolist() == [10 * math.ceil(e / 64) for e in ends[:-1]]
    assert Schedule(kind="fixed_steps", steps_per_block=7).steps(ends).tolist() == [7] * 10


def test_policy_probe_starts_from_given_lm_weights():
    model_config = GPT2Config(vocab_size=8, n_layer=1, n_head=2, d_model=8, max_len=8)
    fresh = jax.jit(policy_probe(model_config, 4).init)(jax.random.key(0))
    pretrained = jax.jit(policy_probe(model_config, 4, lm_params=fresh["params"]["lm"]).init)(jax.random.key(1))
    chex_equal = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), fresh["params"]["lm"], pretrained["params"]["lm"])
    assert all(jax.tree.leaves(chex_equal))
    assert not jnp.all(fresh["params"]["score"]["kernel"] == pretrained["params"]["score"]["kernel"])


# RELATIVE EXTRACTABILITY AND THE RUN-DIRECTORY TABLES


def test_ratio_sem_is_first_order_error_propagation():
    mdl_s, mdl_t = [100.0, 110.0, 120.0], [200.0, 220.0, 210.0]
    ratio, sem = relative_extractability(mdl_s, mdl_t)
    sem_s, sem_t = np.std(mdl_s, ddof=1) / math.sqrt(3), np.std(mdl_t, ddof=1) / math.sqrt(3)
    assert ratio == pytest.approx(110.0 / 210.0)
    assert sem == pytest.approx(ratio * math.hypot(sem_s / 110.0, sem_t / 210.0))


def _stand_in_sample_partition(key, task_id, partition, n, vocab_size, seq_len=10):
    """A stand-in for the tasks module: t = 'contains 1', s = 'contains 2', filler from {0, 3, ...}."""
    spurious, target = {"both": (1, 1), "neither": (0, 0), "s_only": (1, 0), "t_only": (0, 1)}[partition]
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    filler = np.array([s for s in range(vocab_size) if s not in (1, 2)])
    tokens = rng.choice(filler, size=(n, seq_len))
    positions = rng.permutation(seq_len)[:2]
    if target:
        tokens[:, positions[0]] = 1
    if spurious:
        tokens[:, positions[1]] = 2
    return jnp.asarray(tokens, jnp.int32)


def _tiny_config(mode: str, **probe) -> config_module.Config:
    return config_module.config_from_dict({
        "task": {"task_ids": [1], "vocab_size": 6},
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16, "max_len": 16},
        "probe": {"mode": mode, "probe_size": 64, "seeds": 2, "schedule": "epochs", "epochs_per_block": 1,
                  "batch_size": 16, "learning_rate": 1e-3, "encoder_layers": 1, "encoder_width": 16, "encoder_heads": 2,
                  "encoder_ff": 32,
                  **probe},
    })


@pytest.mark.parametrize("mode", ["policy", "finetune", "frozen"])
def test_measure_extractability_writes_the_documented_tables(mode, tmp_path, monkeypatch):
    monkeypatch.setattr(experiments_toy.toy_tasks, "sample_partition", _stand_in_sample_partition)
    config = _tiny_config(mode)
    result = measure_extractability(ToyExperiment(config), jax.random.key(0), progress=lambda message: None)
    layers = [0, 1] if mode == "frozen" else [-1]  # embeddings + 1 layer
    assert len(result.extractability_rows) == len(layers) + (mode == "frozen")
    assert len(result.mdl_rows) == 2 * 2 * len(layers)
    assert len(result.block_rows) == 11 * len(result.mdl_rows)
    for row in result.extractability_rows:
        assert row["n_seeds"] == 2 and row["uniform_bits"] == 64.0 and row["probe_mode"] == mode
        assert row["relative_extractability"] == pytest.approx(row["mdl_s_bits"] / row["mdl_t_bits"])
    for row in result.mdl_rows:
        blocks = [b["codelength_bits"] for b in result.block_rows
                  if (b["probe"], b["probe_seed"], b["layer"]) == (row["probe"], row["probe_seed"], row["layer"])]
        assert sum(blocks) == pytest.approx(row["mdl_bits"]) and 0 <= row["accuracy"] <= 1
    result.write(tmp_path)
    for name, columns in (("extractability.csv", extractability.EXTRACTABILITY_COLUMNS),
                          ("mdl.csv", extractability.MDL_COLUMNS), ("mdl_blocks.csv", extractability.BLOCK_COLUMNS)):
        with open(tmp_path / name) as file:
            rows = list(csv.DictReader(file))
        assert list(rows[0]) == columns
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_probe_mode_is_a_clear_error(monkeypatch):
    config = _tiny_config("policy")
    bad = dataclasses.replace(config, probe=dataclasses.replace(config.probe, mode="magic"))
    with pytest.raises(config_module.ConfigError, match="probe.mode: unknown probe mode 'magic'"):
        measure_extractability(ToyExperiment(bad), jax.random.key(0))
    with pytest.raises(ValueError, match="unknown schedule"):
        Schedule(kind="sometimes")
    with pytest.raises(ValueError, match="unknown vectorize"):
        OnlineCode(frozen_probe(2), Schedule(), block_ends(20), vectorize="everything")
