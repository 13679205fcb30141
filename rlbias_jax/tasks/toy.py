"""The toy tasks of Lovering et al. (ICLR 2021), as used by Cruz et al. (2023): SPEC §2–§3.

A sequence of `seq_len` symbols in [0, V) carries two binary features:

- the spurious feature s: the symbol `2` is present. Where s holds, `2` occurs
  exactly once, at a uniformly random position; where s does not hold, it never occurs.
- the target feature t, chosen by task id (`TASK_NAMES`):
  1. contains-1: the symbol `1` occurs. Mirroring s, positives contain `1`
     exactly once (inserted at a random position) and negatives never contain it;
  2. first-last: x[0] == x[L-1];
  3. prefix-duplicate: x[0] == x[1];
  4. contains-first: x[0] occurs again in x[1:];
  5. adjacent-duplicate: x[i] == x[i+1] for some i.

How an example with features (s, t) is drawn: uniform filler over the symbols
other than `2` (and other than `1` for task 1); if t, the task's construction
(e.g. copy x[0] to x[L-1]); if s, overwrite one uniformly chosen position with
`2`. The candidate is then checked and redrawn (`jax.lax.while_loop`) until it
has exactly the requested features, so the result is the filler distribution
conditioned on (s, t) and correctness never rests on the construction. Positives
must be constructed: at V = 50,000 a random sequence almost never satisfies
tasks 2, 3 or 5, while negatives are then accepted almost always. For V >= 3
and the lengths `_check_task_arguments` allows, every (s, t) is reachable, so the
loop ends with probability 1 (at V = 10 a candidate is accepted about 40% of the
time at worst; tiny vocabularies such as V = 3 can need hundreds of redraws).

Compilation: s, t and V are traced inside the sampler, so one compilation per
(task, number of examples, seq_len) serves all partitions and vocabularies.

Partition ids index `PARTITIONS`: both = 0, neither = 1, s_only = 2, t_only = 3.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from rlbias_jax.partitions import PARTITION_FEATURES, PARTITIONS

TASK_NAMES = {
    1: "contains-1",
    2: "first-last",
    3: "prefix-duplicate",
    4: "contains-first",
    5: "adjacent-duplicate",
}
SPURIOUS_SYMBOL = 2
# Task 1's target symbol.
CONTAINS_SYMBOL = 1

_BOTH, _NEITHER, _S_ONLY, _T_ONLY = range(len(PARTITIONS))


class TrainingSet(NamedTuple):
    """A fixed training set; arrays only, so that it can be vmapped over rates and keys.

    tokens: int32[N, seq_len]; labels: int32[N], 1 iff t holds;
    partition_ids: int32[N], indices into `PARTITIONS`.
    """

    tokens: jax.Array
    labels: jax.Array
    partition_ids: jax.Array


# FEATURES


def has_spurious(tokens: jax.Array) -> jax.Array:
    """s for one sequence: whether the symbol 2 occurs. int[L] -> bool[]."""
    chex.assert_rank(tokens, 1)
    chex.assert_type(tokens, int)
    return jnp.any(tokens == SPURIOUS_SYMBOL)


def has_target(task_id: int, tokens: jax.Array) -> jax.Array:
    """t of task `task_id` (static) for one sequence. int[L] -> bool[]."""
    chex.assert_rank(tokens, 1)
    chex.assert_type(tokens, int)
    if task_id == 1:
        return jnp.any(tokens == CONTAINS_SYMBOL)
    if task_id == 2:
        return tokens[0] == tokens[-1]
    if task_id == 3:
        return tokens[0] == tokens[1]
    if task_id == 4:
        return jnp.any(tokens[1:] == tokens[0])
    if task_id == 5:
        return jnp.any(tokens[:-1] == tokens[1:])
    raise ValueError(f"unknown toy task id {task_id}; known ids: {sorted(TASK_NAMES)}")


def _has_exact_features(task_id: int, spurious: jax.Array, target: jax.Array, tokens: jax.Array) -> jax.Array:
    """Whether `tokens` has exactly features (s, t), counting `2` (and task 1's `1`) exactly."""
    spurious_count = jnp.sum(tokens == SPURIOUS_SYMBOL)
    matches = (spurious_count == spurious.astype(jnp.int32)) & (has_target(task_id, tokens) == target)
    if task_id == 1:
        matches &= jnp.sum(tokens == CONTAINS_SYMBOL) == target.astype(jnp.int32)
    return matches


# SAMPLING


def _check_task_arguments(task_id: int, vocab_size: int, seq_len: int) -> None:
    """Reject static arguments for which some partition cannot be drawn (the loop would not end)."""
    if task_id not in TASK_NAMES:
        raise ValueError(f"unknown toy task id {task_id}; known ids: {sorted(TASK_NAMES)}")
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (symbols 0, 1, 2 are used), got {vocab_size}")
    # Tasks 2-5 need two positions for t plus one for the single 2 of the "both" partition.
    min_len = 2 if task_id == 1 else 3
    if seq_len < min_len:
        raise ValueError(f"seq_len must be >= {min_len} for task {task_id}, got {seq_len}")


def _excluded_symbols(task_id: int) -> tuple[int, ...]:
    """Symbols the filler never uses (sorted): 2 always, and task 1's 1 (positives get exactly one)."""
    return (CONTAINS_SYMBOL, SPURIOUS_SYMBOL) if task_id == 1 else (SPURIOUS_SYMBOL,)


def _skip_excluded(symbols: jax.Array, excluded: tuple[int, ...]) -> jax.Array:
    """Map [0, V - len(excluded)) one-to-one onto the symbols of [0, V) other than `excluded` (sorted)."""
    for symbol in excluded:
        symbols = symbols + (symbols >= symbol)
    return symbols


def _construct_target(task_id: int, tokens: jax.Array, position: jax.Array) -> jax.Array:
    """Make t true in filler `tokens` by writing 1, or a copy of a symbol, at a position.

    `position` is uniform in [0, L) for task 1 and in [0, L-1) otherwise.
    """
    seq_len = tokens.shape[0]
    if task_id == 1:
        return tokens.at[position].set(CONTAINS_SYMBOL)
    if task_id == 2:
        return tokens.at[seq_len - 1].set(tokens[0])
    if task_id == 3:
        return tokens.at[1].set(tokens[0])
    if task_id == 4:
        return tokens.at[position + 1].set(tokens[0])
    if task_id == 5:
        return tokens.at[position + 1].set(tokens[position])
    raise ValueError(f"unknown toy task id {task_id}")


def _construct_candidate(
    key: jax.Array, task_id: int, spurious: jax.Array, target: jax.Array, vocab_size: jax.Array, seq_len: int
) -> jax.Array:
    """One candidate for features (s, t); it may miss them (e.g. the 2 overwrote a copy).

    s, t and V are traced scalars so that one compilation serves every partition
    and vocabulary. All randomness comes from one `randint` call, because each
    threefry call is expensive to compile on CPU.
    """
    excluded = _excluded_symbols(task_id)
    target_positions = seq_len if task_id == 1 else seq_len - 1
    upper = jnp.concatenate([
        jnp.full((seq_len,), vocab_size - len(excluded), jnp.int32),  # filler
        jnp.array([target_positions, seq_len], jnp.int32),  # t construction, position of the 2
    ])
    draws = jax.random.randint(key, (seq_len + 2,), 0, upper, dtype=jnp.int32)
    filler = _skip_excluded(draws[:seq_len], excluded)
    tokens = jnp.where(target, _construct_target(task_id, filler, draws[seq_len]), filler)
    return jnp.where(spurious, tokens.at[draws[seq_len + 1]].set(SPURIOUS_SYMBOL), tokens)


def _sample_example(
    key: jax.Array, spurious: jax.Array, target: jax.Array, vocab_size: jax.Array, task_id: int, seq_len: int
) -> jax.Array:
    """One sequence with exactly features (s, t): construct, check, redraw until it matches."""

    def draw(key):
        key, candidate_key = jax.random.split(key)
        return key, _construct_candidate(candidate_key, task_id, spurious, target, vocab_size, seq_len)

    def is_rejected(carry):
        return ~_has_exact_features(task_id, spurious, target, carry[1])

    _, tokens = jax.lax.while_loop(is_rejected, lambda carry: draw(carry[0]), draw(key))
    return tokens


def _sample_from_keys(
    keys: jax.Array, spurious: jax.Array, target: jax.Array, vocab_size, task_id: int, seq_len: int
) -> jax.Array:
    """Example i has features (spurious[i], target[i]) and is drawn from keys[i]: int32[n, seq_len]."""
    chex.assert_rank([spurious, target], 1)
    chex.assert_equal_shape([spurious, target])
    chex.assert_axis_dimension(keys, 0, spurious.shape[0])
    vocab_size = jnp.asarray(vocab_size, jnp.int32)
    sample = functools.partial(_sample_example, vocab_size=vocab_size, task_id=task_id, seq_len=seq_len)
    return jax.vmap(sample)(keys, spurious, target)


@functools.partial(jax.jit, static_argnames=("task_id", "n", "seq_len"))
def _sample_examples(key, spurious, target, vocab_size, task_id, n, seq_len):
    spurious, target = jnp.broadcast_to(spurious, (n,)), jnp.broadcast_to(target, (n,))
    return _sample_from_keys(jax.random.split(key, n), spurious, target, vocab_size, task_id, seq_len)


def sample_examples(
    key: jax.Array, task_id: int, spurious: bool, target: bool, n: int, vocab_size: int, seq_len: int = 10
) -> jax.Array:
    """`n` independent sequences with exactly features (s, t) = (spurious, target): int32[n, seq_len].

    Every argument but `key` is static (Python values). Example i is drawn from
    `jax.random.split(key, n)[i]`.
    """
    _check_task_arguments(task_id, vocab_size, seq_len)
    return _sample_examples(key, jnp.bool_(spurious), jnp.bool_(target), vocab_size, task_id, n, seq_len)


def sample_partition(
    key: jax.Array, task_id: int, partition: str, n: int, vocab_size: int, seq_len: int = 10
) -> jax.Array:
    """`n` sequences of one partition ("both", "neither", "s_only", "t_only"): int32[n, seq_len]."""
    if partition not in PARTITION_FEATURES:
        raise ValueError(f"unknown partition {partition!r}; known: {PARTITIONS}")
    spurious, target = PARTITION_FEATURES[partition]
    return sample_examples(key, task_id, spurious, target, n, vocab_size, seq_len)


@functools.partial(jax.jit, static_argnames=("task_id", "sizes", "seq_len"))
def _make_test_sets(key, vocab_size, task_id, sizes, seq_len):
    # Per-example keys exactly as sample_partition(fold_in(key, i), ...) would split them.
    keys, spurious, target = [], [], []
    for partition, size in sizes:
        index = PARTITIONS.index(partition)
        keys.append(jax.random.split(jax.random.fold_in(key, index), size))
        spurious.append(jnp.full((size,), PARTITION_FEATURES[partition][0]))
        target.append(jnp.full((size,), PARTITION_FEATURES[partition][1]))
    tokens = _sample_from_keys(
        jnp.concatenate(keys), jnp.concatenate(spurious), jnp.concatenate(target), vocab_size, task_id, seq_len
    )
    ends = list(itertools.accumulate(size for _, size in sizes))
    return {partition: tokens[end - size : end] for (partition, size), end in zip(sizes, ends)}


def make_test_sets(
    key: jax.Array, task_id: int, sizes: dict[str, int], vocab_size: int, seq_len: int = 10
) -> dict[str, jax.Array]:
    """Held-out test sets: {partition: int32[sizes[partition], seq_len]} for each partition in `sizes`.

    Partition i (its index in `PARTITIONS`) is exactly
    `sample_partition(fold_in(key, i), task_id, partition, ...)`, so one partition
    does not depend on the sizes of the others; everything is drawn in one
    compiled call. Give this function a key that the training set never sees.
    """
    _check_task_arguments(task_id, vocab_size, seq_len)
    unknown = sorted(set(sizes) - set(PARTITIONS))
    if unknown:
        raise ValueError(f"unknown partitions {unknown}; known: {PARTITIONS}")
    static_sizes = tuple((partition, int(sizes[partition])) for partition in PARTITIONS if partition in sizes)
    return _make_test_sets(key, vocab_size, task_id, static_sizes, seq_len)


# TRAINING SET


def s_only_count(s_only_rate, train_size: int) -> jax.Array:
    """Number of s-only examples: round(s_only_rate * train_size), clipped to [0, train_size].

    Computed with jnp so that the rate may be traced. jnp.round rounds halves to
    even, like Python's round; the product is float32 (p = 0.001, N = 2000 -> 2).
    """
    count = jnp.round(jnp.asarray(s_only_rate, jnp.float32) * train_size).astype(jnp.int32)
    return jnp.clip(count, 0, train_size)


@functools.partial(jax.jit, static_argnames=("task_id", "train_size", "seq_len"))
def _make_training_set(key, s_only_rate, vocab_size, task_id, train_size, seq_len):
    shuffle_key, sample_key = jax.random.split(key)

    # PARTITION PER POSITION: s-only first, then both (floor half), then neither; shuffled
    n_s_only = s_only_count(s_only_rate, train_size)
    n_both = (train_size - n_s_only) // 2
    index = jnp.arange(train_size)
    partition_ids = jnp.where(index < n_s_only, _S_ONLY, jnp.where(index < n_s_only + n_both, _BOTH, _NEITHER))
    partition_ids = jax.random.permutation(shuffle_key, partition_ids).astype(jnp.int32)

    # EXAMPLES: one draw per position with that position's features, so shapes stay static under a traced rate
    spurious = (partition_ids == _BOTH) | (partition_ids == _S_ONLY)
    labels = (partition_ids == _BOTH) | (partition_ids == _T_ONLY)
    keys = jax.random.split(sample_key, train_size)
    tokens = _sample_from_keys(keys, spurious, labels, vocab_size, task_id, seq_len)
    return TrainingSet(tokens=tokens, labels=labels.astype(jnp.int32), partition_ids=partition_ids)


def make_training_set(
    key: jax.Array, task_id: int, s_only_rate, train_size: int, vocab_size: int, seq_len: int = 10
) -> TrainingSet:
    """A training set of `train_size` examples with a fraction `s_only_rate` of s-only ones (SPEC §2).

    Exactly `s_only_count(s_only_rate, train_size)` = round(p · N) examples are
    s-only; of the rest, floor(half) are both and the remainder neither; there
    are no t-only examples. Positions are shuffled with a permutation drawn from
    `key`. `s_only_rate` may be traced (vmap over rates and keys); `task_id`,
    `train_size`, `vocab_size` and `seq_len` are static.
    """
    _check_task_arguments(task_id, vocab_size, seq_len)
    if isinstance(s_only_rate, (int, float)) and not 0.0 <= s_only_rate <= 1.0:
        raise ValueError(f"s_only_rate must lie in [0, 1], got {s_only_rate}")
    return _make_training_set(key, s_only_rate, vocab_size, task_id, train_size, seq_len)
