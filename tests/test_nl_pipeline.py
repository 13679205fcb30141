"""`rlbias run` for experiment "nl" end to end on a tiny random policy (offline), shipped NL
configs, and bad input: missing corpus / reward model / policy, corpus too small, wrong reward kind."""

import csv
import dataclasses

import pytest
from test_nl_fixtures import tiny_policy_folder

from rlbias_jax.cli import main
from rlbias_jax.config import ConfigError, config_from_dict, load_config
from rlbias_jax.experiments.runner import run_experiment


def _config(policy, **overrides):
    data = {
        "run": {"name": "nl_tiny", "experiment": "nl", "chunk_iterations": 2, "report": False},
        "task": {"task_ids": [2, 22], "train_size": 16, "test_size_both": 4, "test_size_neither": 4,
                 "test_size_s_only": 4, "test_size_t_only": 4, "prompt_len": 10},
        "model": {"source": str(policy), "trainable_layers": 1},
        "reward": {"kind": "vader_lexicon"},
        "ppo": {"iterations": 2, "episodes_per_iteration": 8, "minibatch_size": 4, "epochs": 1, "response_len": 4,
                "learning_rate": 1e-3, "kl_coef": 0.2, "adaptive_kl": True, "gamma": 1.0, "value_clip_eps": 0.2,
                "value_coef": 0.1},
        "sweep": {"s_only_rates": [0.0, 0.5], "seeds": 1},
        "eval": {"greedy": False},
        "probe": {"mode": "frozen", "probe_size": 22, "seeds": 2, "steps_per_block": 3, "batch_size": 8},
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy_folder(tmp_path_factory.mktemp("policy"), n_layer=2)


def _read(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def test_run_writes_every_table(policy, tmp_path):
    outcome = run_experiment(_config(policy), out_dir=str(tmp_path), progress=lambda _: None)
    results = _read(outcome.run_dir / "results.csv")
    assert len(results) == 2 * 2 * 4  # tasks × rates × partitions (sampled decoding)
    for row in results:
        assert float(row["score"]) == pytest.approx((float(row["raw_reward"]) + 2.8) / 5.6, abs=1e-6)
    curves = _read(outcome.run_dir / "curves.csv")
    assert {"objective/kl", "objective/kl_coef", "env/reward_mean"} <= set(curves[0])
    extractability = _read(outcome.run_dir / "extractability.csv")
    assert {row["task_name"] for row in extractability} == {"high-rating-vs-review", "even-spaces-vs-dash"}
    assert {row["layer"] for row in extractability} == {"-1", "0", "1", "2"}  # every layer + best
    assert outcome.manifest["experiment"] == "nl" and outcome.manifest["status"] == "complete"
    assert outcome.manifest["phases"]["rl"]["episodes"] == 2 * 8 * 4


@pytest.mark.parametrize("path, task_ids, condition", [
    ("configs/nl_default.toml", (1, 2, 5, 22, 23), "label"),
    ("configs/nl_paper.toml", (1, 2, 5, 6, 22, 23, 24, 28), "label"),
    ("configs/nl_control.toml", (1,), "always_positive"),
])
def test_shipped_nl_configs_are_valid(path, task_ids, condition):
    config = load_config(path)
    assert config.run.experiment == "nl" and config.task.task_ids == task_ids
    assert config.reward.condition == condition


def test_paper_config_has_the_original_generation_lengths():
    ppo = load_config("configs/nl_paper.toml").ppo
    assert (ppo.min_response_len, ppo.response_len) == (32, 48)


def test_control_config_is_nl_default_with_every_prompt_rewarded_positively():
    default, control = load_config("configs/nl_default.toml"), load_config("configs/nl_control.toml")
    assert control.sweep.s_only_rates == (0.0,)
    assert control.model == default.model
    assert dataclasses.replace(control.ppo, iterations=default.ppo.iterations) == default.ppo
    assert control.reward == dataclasses.replace(default.reward, condition="always_positive")
    assert dataclasses.replace(control.task, task_ids=default.task.task_ids) == default.task


@pytest.mark.parametrize("overrides, field", [
    ({"reward": {"kind": "ascending"}}, "reward.kind"),
    ({"model": {"source": "random"}}, "model.source"),
    ({"task": {"task_ids": [1, 3]}}, "task.task_ids"),
    ({"task": {"prompt_len": 2}}, "task.prompt_len"),
    ({"model": {"trainable_layers": -1}}, "model.trainable_layers"),
    ({"reward": {"condition": "sometimes"}}, "reward.condition"),
    ({"ppo": {"min_response_len": 5}}, "ppo.min_response_len"),  # response_len is 4
])
def test_bad_nl_configs_name_the_field(policy, overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        _config(policy, **overrides)


def _cli(tmp_path, policy, *sets):
    path = tmp_path / "nl.toml"
    path.write_text(f'[run]\nname = "bad"\nexperiment = "nl"\nreport = false\nprobe = false\n[model]\nsource = "{policy}"\n'
                    '[reward]\nkind = "vader_lexicon"\n[task]\ntask_ids = [1]\n')
    return main(["run", str(path), "--out-dir", str(tmp_path / "runs"), *[a for s in sets for a in ("--set", s)]])


@pytest.mark.parametrize("setting, message", [
    ('task.corpus="/no/such/corpus.txt"', "'/no/such/corpus.txt' is neither a known corpus"),
    ('reward.kind="classifier"', "lvwerra/distilbert-imdb"),
    ('model.source="/no/such/policy"', "/no/such/policy does not exist"),
    ("task.train_size=20000", "too small for task 1"),
    ("ppo.response_len=60", "ppo.response_len: task.prompt_len + ppo.response_len = 16 + 60 = 76 tokens exceed the 64 positions"),
])
def test_bad_input_is_one_clear_line(tmp_path, policy, capsys, monkeypatch, setting, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    assert _cli(tmp_path, policy, setting) == 2
    error = capsys.readouterr().err
    assert error.startswith("rlbias: error:") and message in error, error


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_critic_free_algorithms_run_the_nl_experiment(policy, tmp_path, name):
    config = _config(policy, algorithm={"name": name, "group_size": 4, "kl_coef": 0.05})
    outcome = run_experiment(config, out_dir=str(tmp_path), probe=False, progress=lambda _: None)
    results = _read(outcome.run_dir / "results.csv")
    assert len(results) == 2 * 2 * 4
    assert all(row["status"] == "ok" and 0.0 <= float(row["score"]) <= 1.0 for row in results)
    assert outcome.manifest["status"] == "complete"
    assert outcome.manifest["phases"]["rl"]["episodes"] == 2 * 8 * 4  # episodes count responses
    curves = _read(outcome.run_dir / "curves.csv")
    assert "loss/value" not in curves[0] and "objective/kl_loss" in curves[0]  # no value loss; the loss-side KL
