"""Toy features as data (SPEC §8, issue 12 item 1): every registered feature in both roles,
the original tasks unchanged, user features from a plugin through `rlbias run`, bad input.

Exactness is checked twice: by the features' own jitted predicates (what the brief asks)
and by plain-Python references written here for the built-in features.
"""

import csv
import functools
import hashlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlbias_jax.config import ConfigError, config_from_dict
from rlbias_jax.tasks import toy
from rlbias_jax.tasks.catalogue import configured_tasks
from rlbias_jax.tasks.features import FEATURES

VOCAB_SIZE = 10
SIZE = 64  # per partition


def _python_reference(name, seq):
    """Built-in features from their definitions (docs/features.md), on a list of ints; None for unknown names."""
    count = seq.count
    if name.startswith("contains-") and name[9:].isdigit():
        return int(name[9:]) in seq
    if name.startswith("all-"):
        return all(int(symbol) in seq for symbol in name[4:].split("-"))
    if name.startswith("count-"):
        symbol, at_least = name[6:].split(">=")
        return count(int(symbol)) >= int(at_least)
    if "-before-" in name:
        a, b = (int(x) for x in name.split("-before-"))
        return a in seq and b in seq and seq.index(a) < seq.index(b)
    if name.startswith("first-is-"):
        return seq[0] == int(name[9:])
    if name.startswith("odd-count-"):
        return count(int(name[10:])) % 2 == 1
    return {
        "first-last": lambda: seq[0] == seq[-1],
        "prefix-duplicate": lambda: seq[0] == seq[1],
        "contains-first": lambda: seq[0] in seq[1:],
        "adjacent-duplicate": lambda: any(a == b for a, b in zip(seq, seq[1:])),
    }.get(name, lambda: None)()


def _partner(name):
    """A feature that can share a task with `name` (different, no common reserved symbol)."""
    reserved = set(FEATURES[name].reserved)
    for other in ("contains-2", "contains-4", "first-last"):
        if other != name and not reserved & set(FEATURES[other].reserved):
            return other
    raise AssertionError(name)


BUILT_IN = sorted(FEATURES)
ROLE_PAIRS = list(dict.fromkeys([(name, _partner(name)) for name in BUILT_IN] + [(_partner(name), name) for name in BUILT_IN]))


@functools.cache
def drawn(target, spurious):
    task = toy.task_from_pair(target, spurious)
    sets = toy.make_test_sets(jax.random.key(task.task_id), task, {p: SIZE for p in toy.PARTITIONS}, VOCAB_SIZE)
    return task, {partition: np.asarray(tokens) for partition, tokens in sets.items()}


def test_the_registry_holds_a_graded_family():
    assert len(BUILT_IN) >= 16
    for name in ("contains-1", "all-1-3", "all-1-3-4", "all-1-3-4-5", "count-1>=2", "1-before-3", "first-last"):
        assert name in FEATURES


@pytest.mark.parametrize("target, spurious", ROLE_PAIRS, ids=[f"t={t},s={s}" for t, s in ROLE_PAIRS])
def test_every_feature_in_both_roles_gives_exact_partitions(target, spurious):
    task, sets = drawn(target, spurious)
    predicates = jax.jit(jax.vmap(lambda x: toy.has_features(task, x)))
    for partition, tokens in sets.items():
        want_s, want_t = toy.PARTITION_FEATURES[partition]
        assert tokens.shape == (SIZE, 10) and tokens.min() >= 0 and tokens.max() < VOCAB_SIZE
        has_s, has_t = (np.asarray(a) for a in predicates(tokens))
        assert has_s.all() == want_s and (~has_s).all() == (not want_s), (partition, tokens[np.argmax(has_s != want_s)])
        assert has_t.all() == want_t and (~has_t).all() == (not want_t), (partition, tokens[np.argmax(has_t != want_t)])
        for seq in tokens.tolist():  # the predicates themselves, against the definitions
            assert _python_reference(spurious, seq) in (None, want_s), (partition, seq)
            assert _python_reference(target, seq) in (None, want_t), (partition, seq)


def test_predicates_agree_with_python_references_on_random_sequences():
    tokens = np.random.default_rng(0).integers(0, 6, size=(400, 10), dtype=np.int32)
    for name in BUILT_IN:
        values = np.asarray(jax.vmap(FEATURES[name].predicate)(tokens))
        np.testing.assert_array_equal(values, [_python_reference(name, seq) for seq in tokens.tolist()], err_msg=name)


def test_near_miss_negatives_are_near_misses():
    _, sets = drawn("count-1>=3", "contains-2")
    assert {seq.count(1) for seq in sets["s_only"].tolist()} == {2}
    assert {seq.count(1) for seq in sets["both"].tolist()} == {3}
    _, sets = drawn("all-1-3-4", "contains-2")
    assert {sum(s in seq for s in (1, 3, 4)) for seq in sets["neither"].tolist()} == {2}
    _, sets = drawn("contains-2", "1-before-3")  # s in the s role: its negatives hold both symbols, reversed
    assert all(seq.index(3) < seq.index(1) for seq in sets["neither"].tolist())


# THE ORIGINAL TASKS: the same examples as before features became data

# sha256 of make_test_sets(key(task_id), task_id, 16 per partition, V) for V = 10 and 50,000, taken from the
# sampler at commit 14f56e3 (toy.py before this change).
ORIGINAL_DIGESTS = {1: "2370ada302b0ebb2", 2: "a5918526a31626bf", 3: "6976cb7696a72eb3", 4: "fa7c7bcaf21179dc", 5: "e7e2e96e647fb818"}


@pytest.mark.parametrize("task_id", [1, 2, 3, 4, 5])
def test_original_tasks_draw_the_same_examples_as_before(task_id):
    digest = hashlib.sha256()
    for vocab_size in (10, 50_000):
        sets = toy.make_test_sets(jax.random.key(task_id), task_id, {p: 16 for p in toy.PARTITIONS}, vocab_size)
        for partition in toy.PARTITIONS:
            digest.update(np.asarray(sets[partition]).tobytes())
    assert digest.hexdigest()[:16] == ORIGINAL_DIGESTS[task_id]


def test_ids_names_and_aliases():
    assert toy.task_from_pair("contains-1", "contains-2") == toy.task_from_id(1)
    assert toy.task_from_id(2).name == "first-last"
    swapped = toy.task_from_pair("contains-2", "first-last")
    assert swapped.name == "contains-2/first-last" and swapped.task_id >= toy.PAIR_ID_BASE
    assert swapped.task_id == toy.pair_task_id("contains-2", "first-last")  # stable: from the names only
    config = config_from_dict({"task": {"task_ids": [3], "task_pairs": [["contains-1", "contains-2"], ["contains-2", "first-last"]]}})
    assert [t.task_id for t in configured_tasks(config.task)] == [3, 1, swapped.task_id]


# BAD INPUT: one line, naming the field, before any compute


@pytest.mark.parametrize("task, message", [
    ({"task_pairs": [["contains-9x", "contains-2"]]}, "task.task_pairs[0]: unknown feature 'contains-9x'; known:"),
    ({"task_pairs": [["first-last", "first-last"]]}, "task.task_pairs[0]: t and s are the same feature 'first-last'"),
    ({"task_pairs": [["contains-1", "count-1>=2"]]}, "both features reserve the symbol(s) [1]"),
    ({"task_pairs": [["all-1-3-4-5", "contains-2"]], "vocab_size": 5}, "task.vocab_size: (5) is too small"),
    ({"task_pairs": [["all-1-3-4-5", "count-2>=2"]]}, "unknown feature 'count-2>=2'"),
    ({"task_pairs": [["all-1-3-4-5", "first-last"]], "seq_len": 5}, "task.seq_len: (5) must be >= 6"),
    ({"task_pairs": [["adjacent-duplicate", "prefix-duplicate"]]}, "partition(s) s_only cannot be drawn"),
    ({"task_ids": [1], "task_pairs": [["contains-1", "contains-2"]]}, "configured twice"),
    ({"task_pairs": [["contains-1", "contains-2"]], "plugins": ["no_such_plugin_module"]}, "task.plugins[0]: cannot import"),
])
def test_bad_tasks_are_one_line_config_errors(task, message):
    with pytest.raises(ConfigError) as error:
        configured_tasks(config_from_dict({"task": {"task_ids": [], **task}}).task)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("pair, field", [(["a"], "task.task_pairs[0]"), (["x", "x"], "task.task_pairs[0]")])
def test_pair_shape_is_checked_by_the_config(pair, field):
    with pytest.raises(ConfigError, match="^" + re.escape(field)):
        config_from_dict({"task": {"task_pairs": [pair]}})


def test_cli_rejects_an_unknown_feature_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[task]\ntask_ids = []\ntask_pairs = [["contains-1", "no-such-feature"]]\n')
    result = subprocess.run([sys.executable, "-m", "rlbias_jax.cli", "validate", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("rlbias: error: task.task_pairs[0]: unknown feature 'no-such-feature'")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# A USER FEATURE, END TO END

PLUGIN = '''
from rlbias_jax.tasks.features import Feature, register_feature

# the last symbol is 0; negatives hold a 0 somewhere else (a near miss)
register_feature(Feature(
    name="ends-with-0",
    predicate=lambda x: x[-1] == 0,
    positive=lambda x, draws: x.at[-1].set(0),
    negative=lambda x, draws: x.at[draws[0]].set(0),
    reserved=(0,),
    draw_bounds=lambda seq_len: (seq_len - 1,),
    min_len=2,
))
'''

SMOKE = '''
[run]
name = "user_feature"
chunk_iterations = 2
[task]
task_ids = []
task_pairs = [["ends-with-0", "contains-2"], ["contains-1", "ends-with-0"]]
plugins = ["{plugin}"]
train_size = 64
test_size_both = 8
test_size_neither = 8
test_size_s_only = 8
test_size_t_only = 8
[model]
n_layer = 1
n_head = 2
d_model = 16
max_len = 16
[ppo]
iterations = 2
episodes_per_iteration = 16
minibatch_size = 8
epochs = 1
[sweep]
s_only_rates = [0.0, 0.5]
seeds = 1
[probe]
probe_size = 44
seeds = 1
epochs_per_block = 1
batch_size = 8
'''


@pytest.mark.slow
def test_a_user_registered_feature_runs_end_to_end(tmp_path, capsys):
    from rlbias_jax.cli import main

    plugin = tmp_path / "my_features.py"
    plugin.write_text(PLUGIN)
    config = tmp_path / "user.toml"
    config.write_text(SMOKE.format(plugin=plugin))
    assert main(["run", str(config), "--out-dir", str(tmp_path / "runs"), "--no-report"]) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "user_feature"
    names = {"ends-with-0/contains-2": toy.pair_task_id("ends-with-0", "contains-2"),
             "contains-1/ends-with-0": toy.pair_task_id("contains-1", "ends-with-0")}
    results = list(csv.DictReader(open(run / "results.csv")))
    assert {(r["task_name"], int(r["task_id"])) for r in results} == set(names.items())
    assert len(results) == 2 * 2 * 2 * 4  # tasks x rates x decodings x partitions
    extractability = list(csv.DictReader(open(run / "extractability.csv")))
    assert {r["task_name"] for r in extractability} == set(names)
    # the user feature in both roles gives exact partitions
    from rlbias_jax.experiments.toy import ToyExperiment
    from rlbias_jax.config import load_config

    experiment = ToyExperiment(load_config(config))
    for task_id in names.values():
        task = experiment.tasks[task_id]
        for partition in toy.PARTITIONS:
            tokens = np.asarray(experiment.test_prompts(task_id, partition))
            has_s, has_t = jax.vmap(lambda x: toy.has_features(task, x))(tokens)
            assert (np.asarray(has_s) == toy.PARTITION_FEATURES[partition][0]).all()
            assert (np.asarray(has_t) == toy.PARTITION_FEATURES[partition][1]).all()


@pytest.mark.parametrize("path", ["configs/toy_smoke.toml", "configs/toy_default.toml", "configs/toy_screen.toml",
                                  "configs/toy_h1.toml", "configs/toy_paper.toml"])
def test_shipped_toy_configs_name_known_tasks(path):
    from pathlib import Path

    from rlbias_jax.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / path)
    tasks = configured_tasks(config.task, check_drawable=False)
    assert len({task.task_id for task in tasks}) == len(tasks) > 0
