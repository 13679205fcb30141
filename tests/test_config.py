"""Invalid configs fail before any compute, naming the field."""

import pytest

from rlbias_jax.config import ConfigError, config_from_dict, load_config

CONFIGS = ["configs/toy_smoke.toml", "configs/toy_default.toml", "configs/toy_paper.toml", "configs/toy_screen.toml", "configs/toy_h1.toml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_are_valid(path):
    load_config(path)


@pytest.mark.parametrize("data, field", [
    ({"task": {"task_ids": [1, 7]}}, "task.task_ids"),
    ({"sweep": {"s_only_rates": [0.0, 1.5]}}, "sweep.s_only_rates"),
    ({"sweep": {"s_only_rates": [-0.1]}}, "sweep.s_only_rates"),
    ({"ppo": {"episodes_per_iteration": 0}}, "ppo.episodes_per_iteration"),
    ({"task": {"train_size": -5}}, "task.train_size"),
    ({"ppo": {"episodes_per_iteration": 100, "minibatch_size": 30}}, "ppo.minibatch_size"),
    ({"ppo": {"learning_rte": 1e-3}}, "ppo.learning_rte"),
    ({"ppo": {"learning_rate": "fast"}}, "ppo.learning_rate"),
    ({"model": {"d_model": 30, "n_head": 4}}, "model.d_model"),
    ({"probe": {"mode": "magic"}}, "probe.mode"),
    ({"modle": {}}, "[modle]"),
    ({"sweep": {"seeds": 2.5}}, "sweep.seeds"),
    # NL-only settings are rejected by the toy experiment, not ignored
    ({"reward": {"condition": "always_positive"}}, "reward.condition"),
    ({"reward": {"condition": "sometimes"}}, "reward.condition"),
    ({"ppo": {"min_response_len": 1}}, "ppo.min_response_len"),
])
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert str(error.value).startswith(field), str(error.value)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        config_from_dict({"ppo": {"learning_rte": 1e-3}})


def test_overrides_are_validated(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nname = "x"\n')
    assert load_config(path, {"sweep.seeds": 3}).sweep.seeds == 3
    with pytest.raises(ConfigError, match="^sweep.seeds"):
        load_config(path, {"sweep.seeds": 0})


def test_bad_toml_and_missing_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[run\nname=")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
