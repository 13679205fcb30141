"""The online code's block schedule and label-balanced block order (SPEC §5).

Blocks are prefixes of one ordering of the probing set. `block_ends` gives the
cumulative ends, `balanced_order` the ordering: shuffle, split by label, and
interleave the classes so that every prefix (hence every block) holds each class
in proportion to its share of the set.

Rounding rule: end_i = floor(f_i · n), computed exactly with rationals (no float
error), then raised to at least i + 1 so that no block is empty. For n a multiple
of 1,000 (n = 2,000 → 2, 4, 8, …, 1,000, 2,000; n = 200,000 → 200, 400, …,
100,000, 200,000) the floor is exact and nothing is raised; the raise matters only
for n < 1,000 (e.g. n = 500 → 1, 2, 3, 4, 8, 16, 31, 62, 125, 250, 500).
"""

from __future__ import annotations

import fractions

import jax
import numpy as np

# Cumulative block ends as fractions of the set (Voita & Titov 2020; Lovering et al. 2021).
BLOCK_FRACTIONS = ("0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.0625", "0.125", "0.25", "0.5", "1")
NUM_BLOCKS = len(BLOCK_FRACTIONS)


def block_ends(num_examples: int, fractions_: tuple[str, ...] = BLOCK_FRACTIONS) -> np.ndarray:
    """Cumulative block ends int64[num_blocks] for a set of `num_examples` (see the module doc).

    Raises ValueError when there are fewer examples than blocks.
    """
    num_blocks = len(fractions_)
    if num_examples < num_blocks:
        raise ValueError(
            f"the online code needs at least one example per block: got {num_examples} examples for {num_blocks} blocks"
        )
    exact = [fractions.Fraction(f) for f in fractions_]
    if exact[-1] != 1 or any(b <= a for a, b in zip(exact, exact[1:])):
        raise ValueError(f"block fractions must increase strictly and end at 1, got {fractions_}")
    ends = np.array([max(int(f * num_examples), i + 1) for i, f in enumerate(exact)], dtype=np.int64)
    assert np.all(np.diff(ends) > 0) and ends[-1] == num_examples, ends
    return ends


def block_starts(ends: np.ndarray) -> np.ndarray:
    """Start of each block: 0 and then the previous end."""
    return np.concatenate([[0], ends[:-1]]).astype(np.int64)


def balanced_order(key: jax.Array, labels: np.ndarray) -> np.ndarray:
    """A random order of the examples in which every prefix is label-balanced: int32[N].

    The examples are shuffled (`key`), split by label, and merged by their rank
    within their class: the j-th example of a class of size n_c sits at
    (j + 1/2) / n_c. With two equal classes this alternates the classes, so every
    even prefix is exactly balanced and every odd one is off by a single example.
    Ties (equal positions) keep the shuffled order, so which class comes first is
    random. Raises ValueError unless at least two classes are present.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a vector, got shape {labels.shape}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError(
            f"a probing set needs at least two classes; all {len(labels)} labels are {classes.tolist()}"
        )
    shuffled = np.asarray(jax.random.permutation(key, len(labels)))
    shuffled_labels = labels[shuffled]
    position = np.empty(len(labels), dtype=np.float64)
    for label, count in zip(classes, counts):
        members = shuffled_labels == label
        position[members] = (np.arange(count) + 0.5) / count
    return shuffled[np.argsort(position, kind="stable")].astype(np.int32)
