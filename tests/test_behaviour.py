"""The behaviour classifier (SPEC §8) on hand-made score tables, and the config fields it reads."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from rlbias_jax.analysis import behaviour
from rlbias_jax.config import ConfigError, config_from_dict

TAU = 0.8
# (both, neither, s_only, t_only) -> class
CASES = {
    "target": (0.97, 0.95, 0.9, 0.85),
    "spurious": (0.97, 0.95, 0.05, 0.1),
    "mixed: s and t (rejects s-only, fails t-only)": (0.97, 0.95, 0.95, 0.05),
    "mixed: s or t (fails s-only, answers t-only)": (0.97, 0.95, 0.05, 0.95),
    "mixed: partial generalisation": (0.97, 0.95, 0.6, 0.5),
    "constant: always the label-0 ordering": (0.0, 0.95, 0.92, 0.0),
    "constant: always the label-1 ordering": (1.0, 0.02, 0.1, 0.97),
    "not learned: neither just below τ": (0.97, 0.79, 0.9, 0.9),
    "not learned: chance everywhere": (0.5, 0.5, 0.5, 0.5),
    "not learned: near-constant but t-only not low": (0.05, 0.95, 0.95, 0.25),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_class_from_hand_made_scores(name):
    expected = name.split(":")[0].replace(" ", "_")
    assert behaviour.classify(*CASES[name], TAU) == expected


def test_thresholds_are_inclusive():
    assert behaviour.classify(0.8, 0.8, 0.8, 0.8, TAU) == "target"  # high: ≥ τ
    assert behaviour.classify(0.8, 0.8, 0.2, 0.2, TAU) == "spurious"  # low: ≤ 1 − τ
    assert behaviour.classify(0.2, 0.8, 0.8, 0.2, TAU) == "constant"
    assert behaviour.classify(0.8, 0.8, 0.2, 0.21, TAU) == "mixed"


def test_a_constant_policy_is_constant_never_target_and_its_use_is_one_half():
    rng = np.random.default_rng(0)
    for _ in range(200):
        low = rng.uniform(0, 1 - TAU, size=2)
        high = rng.uniform(TAU, 1, size=2)
        label0 = (low[0], high[0], high[1], low[1])  # both, neither, s_only, t_only
        label1 = (high[0], low[0], low[1], high[1])
        for scores in (label0, label1):
            assert behaviour.classify(*scores, TAU) == "constant"  # not "not_learned", although both/neither is low
    assert behaviour.classify(0.0, 1.0, 1.0, 0.0, TAU) == "constant"
    use_target = (1.0 + 0.0) / 2
    assert use_target == 0.5 and behaviour.use_spurious(1.0, 0.0) == 0.5  # neither number says anything alone


def test_failed_runs_and_table_classification():
    assert behaviour.classify(math.nan, 0.9, 0.9, 0.9, TAU) == behaviour.FAILED
    rows = [CASES[name] for name in CASES]
    table = pd.DataFrame(rows, columns=["both", "neither", "s_only", "t_only"])
    labels = behaviour.classify_runs(table, TAU)
    assert labels.tolist() == [behaviour.classify(*row, TAU) for row in rows]
    per_row = behaviour.classify_runs(table, pd.Series([0.99] * len(rows)))  # τ per row (pooled runs)
    assert per_row.iloc[0] == "not_learned"  # 0.97 < 0.99
    np.testing.assert_allclose(behaviour.use_spurious(table["s_only"], table["t_only"]), 1 - (table["s_only"] + table["t_only"]) / 2)


def test_counts_per_task_and_rate():
    table = pd.DataFrame(
        {"task_id": [1, 1, 1, 2], "s_only_rate": [0.0, 0.0, 0.5, 0.0], "behaviour": ["target", "constant", "constant", "failed"]}
    )
    counted = behaviour.counts(table, ["task_id", "s_only_rate"]).set_index(["task_id", "s_only_rate"])
    assert list(counted.columns) == [*behaviour.BEHAVIOURS, behaviour.FAILED]
    assert counted.loc[(1, 0.0)].tolist() == [1, 0, 0, 1, 0, 0]
    assert counted.loc[(2, 0.0), "failed"] == 1


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("eval", "behaviour_threshold", 0.5, "eval.behaviour_threshold: must be in (0.5, 1]"),
        ("eval", "behaviour_threshold", 1.2, "eval.behaviour_threshold: must be in (0.5, 1]"),
        ("probe", "min_accuracy", 1.5, r"probe.min_accuracy: must be in \[0, 1\] \(got 1.5\)"),
        ("eval", "h1_include_censored", "yes", "eval.h1_include_censored: must be true or false"),
    ],
)
def test_new_config_fields_are_validated_with_one_line(section, key, value, message):
    with pytest.raises(ConfigError, match=message if "\\" in message else re.escape(message)) as error:
        config_from_dict({section: {key: value}})
    assert "\n" not in str(error.value)


def test_new_config_fields_defaults():
    config = config_from_dict({})
    assert (config.eval.behaviour_threshold, config.eval.h1_include_censored, config.probe.min_accuracy) == (0.8, False, 0.9)
