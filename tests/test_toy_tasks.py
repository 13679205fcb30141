"""Tests for the toy tasks (SPEC §2–§3): features, partitions, training sets, determinism.

Features are checked against plain-Python predicates written here, independent
of `has_target`. Sizes are small and each (task, V) set is compiled and drawn once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbias_jax.tasks import toy

TASK_IDS = (1, 2, 3, 4, 5)
VOCAB_SIZES = (10, 50_000)
TEST_SIZE = 200  # per partition
TRAIN_SIZE = 2000
RATES = (0.0, 0.001, 0.0014, 0.1, 0.5, 1.0)  # 0.0014 * 2000 = 2.8 rounds up


def reference_target(task_id, seq):
    """t for one sequence (a list of ints), straight from SPEC §3."""
    if task_id == 1:
        return 1 in seq
    if task_id == 2:
        return seq[0] == seq[-1]
    if task_id == 3:
        return seq[0] == seq[1]
    if task_id == 4:
        return seq[0] in seq[1:]
    if task_id == 5:
        return any(a == b for a, b in zip(seq, seq[1:]))
    raise ValueError(task_id)


@functools.cache
def drawn_test_sets(task_id, vocab_size):
    """One held-out set per partition, drawn once per (task, V) and shared by the tests."""
    sets = toy.make_test_sets(jax.random.key(task_id), task_id, {p: TEST_SIZE for p in toy.PARTITIONS}, vocab_size)
    return {partition: np.asarray(tokens) for partition, tokens in sets.items()}


# The RL sweep's usage: one compiled call over a batch of rates and keys.
make_training_sets = jax.jit(jax.vmap(lambda key, rate: toy.make_training_set(key, 2, rate, TRAIN_SIZE, 10)))


@functools.cache
def training_sets(seed=7):
    """Training sets for every rate in RATES (task 2, V = 10), one key per rate."""
    keys = jax.random.split(jax.random.key(seed), len(RATES))
    return keys, make_training_sets(keys, jnp.array(RATES, jnp.float32))


# FEATURES OF EVERY GENERATED EXAMPLE


@pytest.mark.parametrize("vocab_size", VOCAB_SIZES)
@pytest.mark.parametrize("task_id", TASK_IDS)
def test_every_example_has_exactly_its_partition_features(task_id, vocab_size):
    for partition, tokens in drawn_test_sets(task_id, vocab_size).items():
        spurious, target = toy.PARTITION_FEATURES[partition]
        assert tokens.shape == (TEST_SIZE, 10) and tokens.dtype == np.int32
        assert tokens.min() >= 0 and tokens.max() < vocab_size
        for seq in tokens.tolist():
            assert seq.count(2) == (1 if spurious else 0), (partition, seq)
            assert reference_target(task_id, seq) == target, (partition, seq)
            if task_id == 1:  # mirrors s: the 1 occurs exactly once in positives, never in negatives
                assert seq.count(1) == (1 if target else 0), (partition, seq)


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_predicates_agree_with_reference_on_random_sequences(task_id):
    # V = 4 makes every feature true for a good share of unconstrained sequences.
    tokens = np.random.default_rng(0).integers(0, 4, size=(500, 10), dtype=np.int32)
    target = np.asarray(jax.vmap(functools.partial(toy.has_target, task_id))(tokens))
    spurious = np.asarray(jax.vmap(toy.has_spurious)(tokens))
    expected_target = [reference_target(task_id, seq) for seq in tokens.tolist()]
    assert 0 < sum(expected_target) < len(expected_target)
    np.testing.assert_array_equal(target, expected_target)
    np.testing.assert_array_equal(spurious, (tokens == 2).any(axis=1))


def test_partition_ids_index_partitions():
    assert toy.PARTITIONS == ("both", "neither", "s_only", "t_only")
    assert toy.PARTITION_FEATURES["s_only"] == (True, False)
    assert toy.PARTITION_FEATURES["t_only"] == (False, True)


# DISTRIBUTION SANITY


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_position_of_the_2_varies(task_id):
    for partition in ("both", "s_only"):
        positions = np.argmax(drawn_test_sets(task_id, 10)[partition] == 2, axis=1)
        # At most 2 positions are excluded (e.g. x[0] and x[9] in first-last "both").
        assert len(set(positions.tolist())) >= 8, (partition, sorted(set(positions.tolist())))


def test_constructed_positions_vary():
    # V = 50,000: chance coincidences are rare, so the copy and the 1 are where the construction put them.
    ones = np.argmax(drawn_test_sets(1, 50_000)["t_only"] == 1, axis=1)
    assert len(set(ones.tolist())) == 10
    both_4 = drawn_test_sets(4, 50_000)["t_only"]
    copies = np.argmax(both_4[:, 1:] == both_4[:, :1], axis=1) + 1
    assert len(set(copies.tolist())) == 9
    both_5 = drawn_test_sets(5, 50_000)["t_only"]
    pairs = np.argmax(both_5[:, :-1] == both_5[:, 1:], axis=1)
    assert len(set(pairs.tolist())) == 9


def test_task_1_negatives_never_contain_1():
    for vocab_size in VOCAB_SIZES:
        sets = drawn_test_sets(1, vocab_size)
        for partition in ("neither", "s_only"):
            assert not (sets[partition] == 1).any()


def test_filler_uses_the_whole_vocabulary():
    neither = drawn_test_sets(3, 10)["neither"]
    assert set(np.unique(neither).tolist()) == {0, 1, 3, 4, 5, 6, 7, 8, 9}
    # Uniform over 9 symbols: 2000 draws, expected about 222 each.
    counts = np.bincount(neither.ravel(), minlength=10)
    assert counts[[0, 1, 3, 4, 5, 6, 7, 8, 9]].min() > 150
    large = drawn_test_sets(3, 50_000)["neither"]
    assert large.max() > 45_000 and large.min() < 5_000


def test_make_test_sets_matches_sample_partition():
    # Partition i of make_test_sets(key) is sample_partition(fold_in(key, i)): independent of the other sizes.
    s_only = toy.sample_partition(jax.random.fold_in(jax.random.key(3), 2), 3, "s_only", TEST_SIZE, 10)
    np.testing.assert_array_equal(drawn_test_sets(3, 10)["s_only"], s_only)
    with pytest.raises(ValueError, match="partitions"):
        toy.make_test_sets(jax.random.key(3), 3, {"s-only": 5}, 10)


# TRAINING SET


@pytest.mark.parametrize("rate_index", range(len(RATES)))
def test_training_set_counts_labels_and_features(rate_index):
    _, sets = training_sets()
    rate = RATES[rate_index]
    tokens = np.asarray(sets.tokens[rate_index])
    labels = np.asarray(sets.labels[rate_index])
    partition_ids = np.asarray(sets.partition_ids[rate_index])

    n_s_only = round(rate * TRAIN_SIZE)  # 0.001 -> 2, 0.0014 -> 3
    n_both = (TRAIN_SIZE - n_s_only) // 2
    counts = np.bincount(partition_ids, minlength=4)
    assert counts.tolist() == [n_both, TRAIN_SIZE - n_s_only - n_both, n_s_only, 0]
    assert tokens.shape == (TRAIN_SIZE, 10) and labels.dtype == np.int32 and partition_ids.dtype == np.int32
    np.testing.assert_array_equal(labels, partition_ids == 0)
    for seq, partition_id in zip(tokens.tolist(), partition_ids.tolist()):
        spurious, target = toy.PARTITION_FEATURES[toy.PARTITIONS[partition_id]]
        assert seq.count(2) == (1 if spurious else 0)
        assert reference_target(2, seq) == target


def test_training_set_is_shuffled():
    _, sets = training_sets()
    half = np.asarray(sets.partition_ids[RATES.index(0.5)])
    # Unshuffled, the 1000 s-only examples would fill the first half.
    assert 300 < (half[: TRAIN_SIZE // 2] == 2).sum() < 700


def test_training_set_without_vmap_matches_vmapped():
    keys, sets = training_sets()
    index = RATES.index(0.1)
    single = toy.make_training_set(keys[index], 2, 0.1, TRAIN_SIZE, 10)
    for field in toy.TrainingSet._fields:
        np.testing.assert_array_equal(getattr(single, field), getattr(sets, field)[index])


def test_s_only_count_rounds():
    counts = [int(toy.s_only_count(rate, TRAIN_SIZE)) for rate in RATES]
    assert counts == [0, 2, 3, 200, 1000, 2000]


# DETERMINISM AND ARGUMENT CHECKS


def test_same_key_same_examples_different_key_different():
    # Same static arguments as the sample_partition call above: no new compilation.
    draw = functools.partial(toy.sample_examples, task=3, spurious=True, target=False, n=TEST_SIZE, vocab_size=10)
    first = np.asarray(draw(jax.random.key(3)))
    np.testing.assert_array_equal(first, draw(jax.random.key(3)))
    assert not np.array_equal(first, draw(jax.random.key(4)))


def test_training_set_deterministic_per_key():
    keys, sets = training_sets()
    again = make_training_sets(keys, jnp.array(RATES, jnp.float32))
    other = make_training_sets(jax.random.split(jax.random.key(8), len(RATES)), jnp.array(RATES, jnp.float32))
    for field in toy.TrainingSet._fields:
        np.testing.assert_array_equal(getattr(sets, field), getattr(again, field))
    assert not np.array_equal(sets.tokens, other.tokens)
    assert not np.array_equal(sets.partition_ids[RATES.index(0.5)], other.partition_ids[RATES.index(0.5)])


def test_invalid_arguments_raise():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="task id"):
        toy.sample_examples(key, 6, True, True, 4, 10)
    with pytest.raises(ValueError, match="vocab_size"):
        toy.sample_examples(key, 2, True, True, 4, 2)
    with pytest.raises(ValueError, match="seq_len"):
        toy.sample_examples(key, 3, True, True, 4, 10, seq_len=2)
    with pytest.raises(ValueError, match="partition"):
        toy.sample_partition(key, 2, "s-only", 4, 10)
    with pytest.raises(ValueError, match="s_only_rate"):
        toy.make_training_set(key, 2, 1.5, 10, 10)
