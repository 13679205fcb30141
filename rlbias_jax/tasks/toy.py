"""The toy tasks of Lovering et al. (ICLR 2021), as used by Cruz et al. (2023): SPEC §2–§3, §8.

A sequence of `seq_len` symbols in [0, V) carries two binary features, the target t
and the spurious s. Features are data (`rlbias_jax.tasks.features`): a task is a
(t, s) pair of registered features (`ToyTask`). The original tasks keep their ids
(`ORIGINAL_TASKS`), all with s = contains-2 (the symbol `2` occurs, exactly once):

  1. contains-1: the symbol `1` occurs (exactly once in positives, never in negatives);
  2. first-last: x[0] == x[L-1];
  3. prefix-duplicate: x[0] == x[1];
  4. contains-first: x[0] occurs again in x[1:];
  5. adjacent-duplicate: x[i] == x[i+1] for some i.

Any other pair gets a stable id from its names (`pair_task_id`), so that runs of one
pair from different configs pool.

How an example with features (s, t) is drawn: uniform filler over the symbols that
neither feature reserves; then t's construction (positive or negative), then s's
(e.g. overwrite one uniformly chosen position with `2`). The candidate is then checked
(`Feature.check` of both features) and redrawn (`jax.lax.while_loop`) until it has
exactly the requested features, so the result is the construction's distribution
conditioned on (s, t) and correctness never rests on the construction. Positives must
be constructed: at V = 50,000 a random sequence almost never satisfies first-last,
while negatives are then accepted almost always. `check_task` rejects static arguments
for which a partition cannot be drawn (reserved symbols that collide or do not fit in
V, too short sequences) and `undrawable_partitions` catches the rest (features that
imply each other) by drawing candidates, so the loop ends with probability 1.

Compilation: s, t and V are traced inside the sampler, so one compilation per
(task, number of examples, seq_len) serves all partitions and vocabularies.

Partition ids index `PARTITIONS`: both = 0, neither = 1, s_only = 2, t_only = 3.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import zlib
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from rlbias_jax.config import ConfigError
from rlbias_jax.partitions import PARTITION_FEATURES, PARTITIONS
from rlbias_jax.tasks.features import FEATURES, Feature, get_feature

# The original tasks (SPEC §3): id -> (t, s) feature names. These ids are aliases in configs.
ORIGINAL_TASKS = {
    1: ("contains-1", "contains-2"),
    2: ("first-last", "contains-2"),
    3: ("prefix-duplicate", "contains-2"),
    4: ("contains-first", "contains-2"),
    5: ("adjacent-duplicate", "contains-2"),
}
TASK_NAMES = {task_id: target for task_id, (target, _) in ORIGINAL_TASKS.items()}
SPURIOUS_SYMBOL = 2
# Ids of pairs other than the original ones: PAIR_ID_BASE + crc32("t/s") mod PAIR_ID_RANGE.
PAIR_ID_BASE, PAIR_ID_RANGE = 100_000, 900_000

_BOTH, _NEITHER, _S_ONLY, _T_ONLY = range(len(PARTITIONS))


class TrainingSet(NamedTuple):
    """A fixed training set; arrays only, so that it can be vmapped over rates and keys.

    tokens: int32[N, seq_len]; labels: int32[N], 1 iff t holds;
    partition_ids: int32[N], indices into `PARTITIONS`.
    """

    tokens: jax.Array
    labels: jax.Array
    partition_ids: jax.Array


@dataclasses.dataclass(frozen=True)
class ToyTask:
    """A (t, s) pair of features with its id and name (hashable: a static argument of the samplers)."""

    task_id: int
    name: str
    target: Feature
    spurious: Feature

    @property
    def pair(self) -> tuple[str, str]:
        return self.target.name, self.spurious.name


# TASKS


def pair_task_id(target: str, spurious: str) -> int:
    """The id of the task (t, s): the original id for an original pair, else a stable hash of the names."""
    for task_id, pair in ORIGINAL_TASKS.items():
        if pair == (target, spurious):
            return task_id
    return PAIR_ID_BASE + zlib.crc32(f"{target}/{spurious}".encode()) % PAIR_ID_RANGE


def task_from_pair(target: str, spurious: str, field: str = "task.task_pairs") -> ToyTask:
    """The task (t, s) from registered feature names; ConfigError naming `field` for unknown or equal names."""
    if target == spurious:
        raise ConfigError(f"{field}: t and s are the same feature {target!r}; a task needs two different features")
    t_feature, s_feature = get_feature(target, field), get_feature(spurious, field)
    task_id = pair_task_id(target, spurious)
    name = TASK_NAMES[task_id] if task_id in TASK_NAMES else f"{target}/{spurious}"
    return ToyTask(task_id=task_id, name=name, target=t_feature, spurious=s_feature)


def task_from_id(task_id: int) -> ToyTask:
    """An original task by id (1-5)."""
    if task_id not in ORIGINAL_TASKS:
        raise ConfigError(f"task.task_ids: unknown toy task id {task_id}; known ids: {sorted(ORIGINAL_TASKS)} "
                          "(other tasks: task.task_pairs)")
    return task_from_pair(*ORIGINAL_TASKS[task_id], field="task.task_ids")


def as_task(task: int | ToyTask) -> ToyTask:
    return task if isinstance(task, ToyTask) else task_from_id(task)


def check_task(task: ToyTask, vocab_size: int, seq_len: int, field: str = "task.task_pairs") -> None:
    """Reject static arguments for which some partition cannot be drawn (the loop would not end): ConfigError."""
    t, s = task.target, task.spurious
    label = f"task {task.name!r} (t = {t.name}, s = {s.name})"
    if t.name == s.name:
        raise ConfigError(f"{field}: t and s are the same feature {t.name!r}; a task needs two different features")
    shared = sorted(set(t.reserved) & set(s.reserved))
    if shared:
        raise ConfigError(f"{field}: {label}: both features reserve the symbol(s) {shared}, so some partitions cannot be drawn")
    reserved = set(t.reserved) | set(s.reserved)
    if reserved and max(reserved) >= vocab_size:
        raise ConfigError(f"task.vocab_size: ({vocab_size}) is too small for {label}: it reserves symbol {max(reserved)}")
    needed = len(reserved) + max(t.min_symbols, s.min_symbols)
    if vocab_size < needed:
        raise ConfigError(f"task.vocab_size: ({vocab_size}) must be >= {needed} for {label} "
                          f"({len(reserved)} reserved symbols + {max(t.min_symbols, s.min_symbols)} filler symbols)")
    if seq_len < t.min_len + s.min_len:
        raise ConfigError(f"task.seq_len: ({seq_len}) must be >= {t.min_len + s.min_len} for {label}")


def _checked(task: int | ToyTask, vocab_size: int, seq_len: int) -> ToyTask:
    task = as_task(task)
    check_task(task, vocab_size, seq_len)
    return task


# FEATURES OF A SEQUENCE


def has_spurious(tokens: jax.Array) -> jax.Array:
    """The original tasks' s for one sequence: whether the symbol 2 occurs. int[L] -> bool[]."""
    chex.assert_rank(tokens, 1)
    chex.assert_type(tokens, int)
    return jnp.any(tokens == SPURIOUS_SYMBOL)


def has_target(task: int | ToyTask, tokens: jax.Array) -> jax.Array:
    """t of a task (static) for one sequence. int[L] -> bool[]."""
    chex.assert_rank(tokens, 1)
    chex.assert_type(tokens, int)
    return as_task(task).target.predicate(tokens)


def has_features(task: int | ToyTask, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(s, t) of a task (static) for one sequence, by the features' predicates. int[L] -> (bool[], bool[])."""
    chex.assert_rank(tokens, 1)
    task = as_task(task)
    return task.spurious.predicate(tokens), task.target.predicate(tokens)


def _has_exact_features(task: ToyTask, spurious: jax.Array, target: jax.Array, tokens: jax.Array) -> jax.Array:
    """Whether `tokens` has exactly features (s, t), as each feature's `check` counts them."""
    return task.spurious.check(tokens, spurious) & task.target.check(tokens, target)


# SAMPLING


def _excluded_symbols(task: ToyTask) -> tuple[int, ...]:
    """Symbols the filler never uses (sorted): those either feature reserves."""
    return tuple(sorted(set(task.target.reserved) | set(task.spurious.reserved)))


def _skip_excluded(symbols: jax.Array, excluded: tuple[int, ...]) -> jax.Array:
    """Map [0, V - len(excluded)) one-to-one onto the symbols of [0, V) other than `excluded` (sorted)."""
    for symbol in excluded:
        symbols = symbols + (symbols >= symbol)
    return symbols


def _construct_candidate(
    key: jax.Array, task: ToyTask, spurious: jax.Array, target: jax.Array, vocab_size: jax.Array, seq_len: int
) -> jax.Array:
    """One candidate for features (s, t); it may miss them (e.g. the 2 overwrote a copy).

    s, t and V are traced scalars so that one compilation serves every partition
    and vocabulary. All randomness comes from one `randint` call (filler, t's draws,
    s's draws), because each threefry call is expensive to compile on CPU.
    """
    excluded = _excluded_symbols(task)
    t_bounds, s_bounds = task.target.draw_bounds(seq_len), task.spurious.draw_bounds(seq_len)
    upper = jnp.concatenate([
        jnp.full((seq_len,), vocab_size - len(excluded), jnp.int32),  # filler
        jnp.array(t_bounds + s_bounds, jnp.int32),
    ])
    draws = jax.random.randint(key, (seq_len + len(t_bounds) + len(s_bounds),), 0, upper, dtype=jnp.int32)
    filler = _skip_excluded(draws[:seq_len], excluded)
    t_draws, s_draws = draws[seq_len : seq_len + len(t_bounds)], draws[seq_len + len(t_bounds) :]
    tokens = task.target.construct(filler, t_draws, target)
    return task.spurious.construct(tokens, s_draws, spurious)


def _sample_example(
    key: jax.Array, spurious: jax.Array, target: jax.Array, vocab_size: jax.Array, task: ToyTask, seq_len: int
) -> jax.Array:
    """One sequence with exactly features (s, t): construct, check, redraw until it matches."""

    def draw(key):
        key, candidate_key = jax.random.split(key)
        return key, _construct_candidate(candidate_key, task, spurious, target, vocab_size, seq_len)

    def is_rejected(carry):
        return ~_has_exact_features(task, spurious, target, carry[1])

    _, tokens = jax.lax.while_loop(is_rejected, lambda carry: draw(carry[0]), draw(key))
    return tokens


def _sample_from_keys(
    keys: jax.Array, spurious: jax.Array, target: jax.Array, vocab_size, task: ToyTask, seq_len: int
) -> jax.Array:
    """Example i has features (spurious[i], target[i]) and is drawn from keys[i]: int32[n, seq_len]."""
    chex.assert_rank([spurious, target], 1)
    chex.assert_equal_shape([spurious, target])
    chex.assert_axis_dimension(keys, 0, spurious.shape[0])
    vocab_size = jnp.asarray(vocab_size, jnp.int32)
    sample = functools.partial(_sample_example, vocab_size=vocab_size, task=task, seq_len=seq_len)
    return jax.vmap(sample)(keys, spurious, target)


@functools.partial(jax.jit, static_argnames=("task", "n", "seq_len"))
def _sample_examples(key, spurious, target, vocab_size, task, n, seq_len):
    spurious, target = jnp.broadcast_to(spurious, (n,)), jnp.broadcast_to(target, (n,))
    return _sample_from_keys(jax.random.split(key, n), spurious, target, vocab_size, task, seq_len)


def sample_examples(
    key: jax.Array, task: int | ToyTask, spurious: bool, target: bool, n: int, vocab_size: int, seq_len: int = 10
) -> jax.Array:
    """`n` independent sequences with exactly features (s, t) = (spurious, target): int32[n, seq_len].

    `task` is an original task id or a `ToyTask`; every argument but `key` is static
    (Python values). Example i is drawn from `jax.random.split(key, n)[i]`.
    """
    task = _checked(task, vocab_size, seq_len)
    return _sample_examples(key, jnp.bool_(spurious), jnp.bool_(target), vocab_size, task, n, seq_len)


def sample_partition(
    key: jax.Array, task: int | ToyTask, partition: str, n: int, vocab_size: int, seq_len: int = 10
) -> jax.Array:
    """`n` sequences of one partition ("both", "neither", "s_only", "t_only"): int32[n, seq_len]."""
    if partition not in PARTITION_FEATURES:
        raise ValueError(f"unknown partition {partition!r}; known: {PARTITIONS}")
    spurious, target = PARTITION_FEATURES[partition]
    return sample_examples(key, task, spurious, target, n, vocab_size, seq_len)


@functools.partial(jax.jit, static_argnames=("task", "sizes", "seq_len"))
def _make_test_sets(key, vocab_size, task, sizes, seq_len):
    # Per-example keys exactly as sample_partition(fold_in(key, i), ...) would split them.
    keys, spurious, target = [], [], []
    for partition, size in sizes:
        index = PARTITIONS.index(partition)
        keys.append(jax.random.split(jax.random.fold_in(key, index), size))
        spurious.append(jnp.full((size,), PARTITION_FEATURES[partition][0]))
        target.append(jnp.full((size,), PARTITION_FEATURES[partition][1]))
    tokens = _sample_from_keys(
        jnp.concatenate(keys), jnp.concatenate(spurious), jnp.concatenate(target), vocab_size, task, seq_len
    )
    ends = list(itertools.accumulate(size for _, size in sizes))
    return {partition: tokens[end - size : end] for (partition, size), end in zip(sizes, ends)}


def make_test_sets(
    key: jax.Array, task: int | ToyTask, sizes: dict[str, int], vocab_size: int, seq_len: int = 10
) -> dict[str, jax.Array]:
    """Held-out test sets: {partition: int32[sizes[partition], seq_len]} for each partition in `sizes`.

    Partition i (its index in `PARTITIONS`) is exactly
    `sample_partition(fold_in(key, i), task, partition, ...)`, so one partition
    does not depend on the sizes of the others; everything is drawn in one
    compiled call. Give this function a key that the training set never sees.
    """
    task = _checked(task, vocab_size, seq_len)
    unknown = sorted(set(sizes) - set(PARTITIONS))
    if unknown:
        raise ValueError(f"unknown partitions {unknown}; known: {PARTITIONS}")
    static_sizes = tuple((partition, int(sizes[partition])) for partition in PARTITIONS if partition in sizes)
    return _make_test_sets(key, vocab_size, task, static_sizes, seq_len)


@functools.partial(jax.jit, static_argnames=("task", "n", "seq_len"))
def _accepted_candidates(key, vocab_size, task, n, seq_len):
    counts = []
    for partition in PARTITIONS:
        spurious, target = (jnp.bool_(value) for value in PARTITION_FEATURES[partition])

        def accepted(candidate_key):
            tokens = _construct_candidate(candidate_key, task, spurious, target, vocab_size, seq_len)
            return _has_exact_features(task, spurious, target, tokens)

        counts.append(jnp.sum(jax.vmap(accepted)(jax.random.split(jax.random.fold_in(key, len(counts)), n))))
    return jnp.stack(counts)


def undrawable_partitions(task: int | ToyTask, vocab_size: int, seq_len: int = 10, n: int = 2048) -> list[str]:
    """Partitions of which none of `n` candidates had exactly its features (e.g. t implies s): cannot be drawn, or
    only so rarely that the rejection loop would crawl. The static `check_task` runs first."""
    task = _checked(task, vocab_size, seq_len)
    counts = _accepted_candidates(jax.random.key(0), jnp.int32(vocab_size), task, n, seq_len)
    return [partition for partition, count in zip(PARTITIONS, counts.tolist()) if count == 0]


# TRAINING SET


def s_only_count(s_only_rate, train_size: int) -> jax.Array:
    """Number of s-only examples: round(s_only_rate * train_size), clipped to [0, train_size].

    Computed with jnp so that the rate may be traced. jnp.round rounds halves to
    even, like Python's round; the product is float32 (p = 0.001, N = 2000 -> 2).
    """
    count = jnp.round(jnp.asarray(s_only_rate, jnp.float32) * train_size).astype(jnp.int32)
    return jnp.clip(count, 0, train_size)


@functools.partial(jax.jit, static_argnames=("task", "train_size", "seq_len"))
def _make_training_set(key, s_only_rate, vocab_size, task, train_size, seq_len):
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
    tokens = _sample_from_keys(keys, spurious, labels, vocab_size, task, seq_len)
    return TrainingSet(tokens=tokens, labels=labels.astype(jnp.int32), partition_ids=partition_ids)


def make_training_set(
    key: jax.Array, task: int | ToyTask, s_only_rate, train_size: int, vocab_size: int, seq_len: int = 10
) -> TrainingSet:
    """A training set of `train_size` examples with a fraction `s_only_rate` of s-only ones (SPEC §2).

    Exactly `s_only_count(s_only_rate, train_size)` = round(p · N) examples are
    s-only; of the rest, floor(half) are both and the remainder neither; there
    are no t-only examples. Positions are shuffled with a permutation drawn from
    `key`. `s_only_rate` may be traced (vmap over rates and keys); `task`,
    `train_size`, `vocab_size` and `seq_len` are static.
    """
    task = _checked(task, vocab_size, seq_len)
    if isinstance(s_only_rate, (int, float)) and not 0.0 <= s_only_rate <= 1.0:
        raise ValueError(f"s_only_rate must lie in [0, 1], got {s_only_rate}")
    return _make_training_set(key, s_only_rate, vocab_size, task, train_size, seq_len)


__all__ = [
    "FEATURES", "ORIGINAL_TASKS", "PARTITIONS", "PARTITION_FEATURES", "SPURIOUS_SYMBOL", "TASK_NAMES", "ToyTask",
    "TrainingSet", "as_task", "check_task", "has_features", "has_spurious", "has_target", "make_test_sets",
    "make_training_set", "pair_task_id", "sample_examples", "sample_partition", "s_only_count", "task_from_id",
    "task_from_pair", "undrawable_partitions",
]
