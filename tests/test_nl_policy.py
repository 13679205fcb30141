"""NL PPO pieces: the adaptive KL controller against hand-computed updates (TRL 0.7 semantics),
the per-token KL penalty with the score at the last token, the frozen-trunk split against the
full model, and one sweep chunk with the frozen weights and the reference shared, not copied."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_nl_fixtures import tiny_policy_folder

from rlbias_jax.config import config_from_dict
from rlbias_jax.models import split
from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.heads import PolicyValueModel
from rlbias_jax.models.llama import Llama, LlamaConfig
from rlbias_jax.experiments import nl
from rlbias_jax.experiments.base import run_specs
from rlbias_jax.experiments.sweep_phase import evaluation_rows
from rlbias_jax.rl import sentiment, sweep
from rlbias_jax.rl.kl import adaptive_kl_update
from rlbias_jax.rl.train import per_token_rewards


@pytest.mark.parametrize("kl, expected", [
    (9.0, 0.2 * (1 + 0.2 * 256 / 10000)),  # error 0.5 clipped to +0.2
    (3.0, 0.2 * (1 - 0.2 * 256 / 10000)),  # error -0.5 clipped to -0.2
    (6.6, 0.2 * (1 + 0.1 * 256 / 10000)),  # error 0.1 inside the clip
    (6.0, 0.2),
])
def test_adaptive_kl_controller_by_hand(kl, expected):
    """TRL 0.7 AdaptiveKLController(init 0.2, target 6, horizon 10,000), n_steps = batch size 256."""
    beta = adaptive_kl_update(jnp.float32(0.2), jnp.float32(kl), 6.0, 10000.0, 256)
    np.testing.assert_allclose(float(beta), expected, rtol=1e-6)


def test_adaptive_kl_controller_sequence():
    """Three updates in a row, written out: 0.2 -> 0.201024 -> 0.20051... -> 0.20051..."""
    beta = jnp.float32(0.2)
    expected = 0.2
    for kl, error in ((12.0, 0.2), (4.8, -0.2), (6.0, 0.0)):
        beta = adaptive_kl_update(beta, jnp.float32(kl), 6.0, 10000.0, 256)
        expected *= 1 + error * 256 / 10000
        np.testing.assert_allclose(float(beta), expected, rtol=1e-6)


def test_per_token_kl_penalty_with_score_at_last_token():
    kl = jnp.asarray([[0.5, -0.25, 1.0, 2.0], [0.1, 0.2, 0.3, 0.4]])
    mask = jnp.asarray([[True, True, True, False], [True, True, True, True]])
    rewards = per_token_rewards(jnp.asarray([1.5, -2.0]), kl, mask, jnp.float32(0.2))
    expected = np.asarray([[-0.1, 0.05, -0.2 + 1.5, 0.0], [-0.02, -0.04, -0.06, -0.08 - 2.0]])
    np.testing.assert_allclose(np.asarray(rewards), expected, rtol=1e-6)


# THE FROZEN-TRUNK SPLIT


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_split_trunk_and_top_equal_the_full_model(architecture):
    if architecture == "llama":
        lm = Llama(LlamaConfig(vocab_size=50, n_layer=3, n_head=4, n_kv_head=2, d_model=32, ff_dim=48, max_len=32))
    else:
        lm = GPT2(GPT2Config(vocab_size=50, n_layer=3, n_head=4, d_model=32, max_len=32))
    model = PolicyValueModel(lm)
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 50)
    params = model.init(jax.random.key(1), tokens)["params"]
    params["value_head"]["kernel"] = jax.random.normal(jax.random.key(2), params["value_head"]["kernel"].shape)
    full = model.apply({"params": params}, tokens)
    trainable, frozen = nl.split_params(params, 1)
    assert set(trainable["lm"]) == {"layers_2" if architecture == "llama" else "h_2", "norm" if architecture == "llama" else "ln_f"}
    merged = nl.merge_params(trainable, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    hidden = split.trunk(lm, frozen["lm"], tokens[:, :-1], 2)
    out = split.top(lm, {**frozen["lm"], **trainable["lm"]}, trainable["value_head"], hidden, 2, head_positions=4)
    np.testing.assert_allclose(np.asarray(out.values), np.asarray(full.values[:, 4:8]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(full.logits[:, 4:8]), atol=1e-5)


# ONE SWEEP CHUNK ON A TINY PRETRAINED POLICY


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    folder = tiny_policy_folder(tmp_path_factory.mktemp("policy"), n_layer=3)
    config = config_from_dict({
        "run": {"name": "t", "experiment": "nl", "probe": False},
        "task": {"task_ids": [1, 23], "train_size": 16, "test_size_both": 4, "test_size_neither": 4,
                 "test_size_s_only": 4, "test_size_t_only": 4, "prompt_len": 8},
        "model": {"source": str(folder), "trainable_layers": 1},
        "reward": {"kind": "vader_lexicon"},
        "ppo": {"iterations": 2, "episodes_per_iteration": 8, "minibatch_size": 4, "epochs": 2, "response_len": 5,
                "learning_rate": 1e-3, "kl_coef": 0.2, "adaptive_kl": True, "kl_target": 6.0, "kl_horizon": 10000.0,
                "gamma": 1.0, "value_clip_eps": 0.2, "value_coef": 0.1},
        "sweep": {"s_only_rates": [0.0, 0.5], "seeds": 1},
    })
    experiment = nl.NLExperiment(config)
    experiment.prepare(progress=lambda _: None)
    setup = experiment.setup
    # a dense lexicon (every token has a valence), so that a random tiny policy gets a learning signal
    table = setup.reward.table
    valence = jax.random.normal(jax.random.key(5), table.valence.shape)
    experiment.setup = dataclasses.replace(setup, reward=sentiment.LexiconReward(
        sentiment.LexiconTable(valence=valence, negator=table.negator, continues=jnp.zeros_like(table.continues))))
    return experiment


def test_sweep_chunk_shares_frozen_weights_and_reference(tiny_setup):
    experiment = tiny_setup
    specs = run_specs(experiment.config, experiment.task_names)
    states = experiment.initial_states(specs)
    data = experiment.training_data(specs)
    shared = experiment.shared(specs).value
    runs = len(specs)
    # per run: only the trainable top; shared once: the frozen trunk and the reference top
    assert all(leaf.shape[0] == runs for leaf in jax.tree.leaves(states.train.params))
    assert jax.tree.structure(shared.reference) == jax.tree.structure(jax.tree.map(lambda x: x[0], states.train.params))
    assert "layers_0" in shared.frozen["lm"] and "layers_0" not in states.train.params["lm"]
    chunk = sweep.make_train_chunk(experiment.build_policy, experiment.config.ppo, shared_axis=None)
    old_params = jax.tree.map(np.asarray, states.train.params)  # the chunk donates `states`
    new_states, metrics = chunk(states, data, shared, length=2)
    assert metrics["objective/kl"].shape == (runs, 2)
    # the adaptive controller's update, from the logged KL of each iteration (n_steps = batch size)
    kl = np.asarray(metrics["objective/kl"], np.float64)
    beta = np.asarray(metrics["objective/kl_coef"], np.float64)
    np.testing.assert_allclose(beta[:, 0], 0.2, rtol=1e-6)
    expected = beta[:, 1] * (1 + np.clip(kl[:, 1] / 6.0 - 1, -0.2, 0.2) * 8 / 10000)
    np.testing.assert_allclose(np.asarray(new_states.kl_coef), expected, rtol=1e-5)
    np.testing.assert_allclose(beta[:, 1], beta[:, 0] * (1 + np.clip(kl[:, 0] / 6.0 - 1, -0.2, 0.2) * 8 / 10000), rtol=1e-5)
    # the first PPO epoch starts at ratio 1 (teacher-forced old log-probs through the same split model)
    assert np.all(np.isfinite(np.asarray(metrics["loss/total"])))
    assert not np.asarray(new_states.failed).any()
    moved = jax.tree.map(lambda new, old: float(np.abs(np.asarray(new) - old).max()), new_states.train.params, old_params)
    assert max(jax.tree.leaves(moved)) > 0


def test_evaluation_rows_normalise_the_score(tiny_setup):
    experiment = tiny_setup
    specs = run_specs(experiment.config, experiment.task_names)
    shared = experiment.shared(specs)
    evaluate = sweep.make_evaluate(experiment.build_policy, shared.axis)
    rows = evaluation_rows(experiment, evaluate, specs, experiment.initial_states(specs), shared)
    assert len(rows) == len(specs) * 4 * 2  # partitions × (sample, greedy)
    for row in rows:
        assert row["score"] == pytest.approx((row["raw_reward"] + 2.8) / 5.6)
        assert row["n_examples"] == 4 and row["status"] == "ok"
