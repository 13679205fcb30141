"""Toy features as data (SPEC §8): a named record per feature, in one registry.

A `Feature` says when a sequence has it (`predicate`, jittable, int[L] -> bool[]), how to
build a sequence that has it (`positive`) and, optionally, one that has not (`negative`:
near-miss negatives, or where rejection alone would be slow), and which symbols it
reserves (the filler never uses them, so only the constructions place them). Any feature
can play the target t or the spurious s of a task (`rlbias_jax.tasks.toy.ToyTask`).

Randomness. A candidate example draws all its integers in one `jax.random.randint` call
(each threefry call is expensive to compile on CPU): the filler, then the t feature's
draws, then the s feature's. A feature declares the upper bounds of the uniform integers
its constructors read (`draw_bounds(seq_len)`, each draw uniform in [0, bound)); the
constructors get them as `draws: int32[k]`. Constructions need not be exact: the
sampler checks every candidate with `accepts` and redraws until it matches, so
correctness rests on `accepts` (by default: `predicate(tokens) == holds`).

Register your own:

    from rlbias_jax.tasks.features import Feature, register_feature
    register_feature(Feature(
        name="last-is-0", predicate=lambda x: x[-1] == 0,
        positive=lambda x, draws: x.at[-1].set(0),
        min_len=1, min_symbols=2))

and name it in a config: `[task] task_pairs = [["last-is-0", "contains-2"]]` with
`plugins = ["my_features"]` (the module that registers it). docs/features.md.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from rlbias_jax.config import ConfigError

Constructor = Callable[[jax.Array, jax.Array], jax.Array]  # (tokens int32[L], draws int32[k]) -> int32[L]


def _no_draws(seq_len: int) -> tuple[int, ...]:
    del seq_len
    return ()


@dataclasses.dataclass(frozen=True)
class Feature:
    """One binary feature of a toy sequence.

    name: how configs name it. predicate: int[L] -> bool[], jittable.
    positive / negative: (tokens int32[L], draws int32[k]) -> int32[L], turn filler into a
      sequence that has / has not the feature (negative None: the filler itself, rejected
      until the predicate is false). Both read the same draws.
    reserved: symbols the filler never uses (only constructions place them).
    draw_bounds: seq_len -> upper bounds of the uniform integers the constructors read.
    accepts: (tokens, holds bool[]) -> bool[]: the exact check a drawn example must pass;
      None = predicate(tokens) == holds. A stricter check (e.g. "exactly one 1") must imply it.
    min_len: positions the constructions need; the task's two features need their sum.
    min_symbols: filler symbols (not reserved by either feature) its examples need.
    """

    name: str
    predicate: Callable[[jax.Array], jax.Array]
    positive: Constructor
    negative: Constructor | None = None
    reserved: tuple[int, ...] = ()
    draw_bounds: Callable[[int], tuple[int, ...]] = _no_draws
    accepts: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    min_len: int = 1
    min_symbols: int = 1
    description: str = ""

    def check(self, tokens: jax.Array, holds: jax.Array) -> jax.Array:
        """Whether `tokens` has exactly the requested value of this feature (the sampler's acceptance test)."""
        if self.accepts is not None:
            return self.accepts(tokens, holds)
        return self.predicate(tokens) == holds

    def construct(self, tokens: jax.Array, draws: jax.Array, holds: jax.Array) -> jax.Array:
        """A candidate with the feature (holds) or without it; holds may be traced."""
        negative = tokens if self.negative is None else self.negative(tokens, draws)
        return jnp.where(holds, self.positive(tokens, draws), negative)


FEATURES: dict[str, Feature] = {}


def register_feature(feature: Feature, *, replace: bool = False) -> Feature:
    """Add a feature to the registry (by name); a second feature of the same name is an error unless `replace`."""
    if not isinstance(feature, Feature):
        raise TypeError(f"register_feature expects a Feature, got {type(feature).__name__}")
    if not feature.name or any(c.isspace() or c == "/" for c in feature.name):
        raise ValueError(f"feature name {feature.name!r} must be non-empty, without spaces or '/'")
    if feature.name in FEATURES and FEATURES[feature.name] is not feature and not replace:
        raise ValueError(f"a feature named {feature.name!r} is already registered (pass replace=True to replace it)")
    if any(not isinstance(s, int) or s < 0 for s in feature.reserved) or len(set(feature.reserved)) != len(feature.reserved):
        raise ValueError(f"feature {feature.name!r}: reserved must be distinct non-negative ints, got {feature.reserved}")
    FEATURES[feature.name] = feature
    return feature


def get_feature(name: str, field: str = "task.task_pairs") -> Feature:
    """The registered feature `name`; ConfigError naming `field` and the known names otherwise."""
    if name not in FEATURES:
        raise ConfigError(f"{field}: unknown feature {name!r}; known: {', '.join(sorted(FEATURES))} "
                          "(register more with rlbias_jax.tasks.features.register_feature and task.plugins)")
    return FEATURES[name]


# ---------------------------------------------------------------------------
# Built-in features: SPEC §3 and a graded family (docs/features.md)


def _count(tokens: jax.Array, symbol: int) -> jax.Array:
    return jnp.sum(tokens == symbol)


def _position_bounds(count: int) -> Callable[[int], tuple[int, ...]]:
    return lambda seq_len: (seq_len,) * count


def _after_first_bounds(seq_len: int) -> tuple[int, ...]:
    return (seq_len - 1,)


def contains(symbol: int) -> Feature:
    """`symbol` occurs: exactly once in positives (at a uniform position), never in negatives (SPEC §3's s and task 1's t)."""
    return Feature(
        name=f"contains-{symbol}",
        predicate=lambda x: jnp.any(x == symbol),
        positive=lambda x, d: x.at[d[0]].set(symbol),
        reserved=(symbol,),
        draw_bounds=_position_bounds(1),
        accepts=lambda x, holds: _count(x, symbol) == holds.astype(jnp.int32),
        description=f"the symbol {symbol} occurs (once; never in negatives)",
    )


def contains_all(symbols: tuple[int, ...]) -> Feature:
    """All of k symbols occur (once each); near-miss negatives hold exactly k - 1 of them (one left out at random)."""
    k = len(symbols)

    def place(x, d, left_out):
        for j, symbol in enumerate(symbols):
            x = jnp.where(j == left_out, x, x.at[d[1 + j]].set(symbol))
        return x

    def accepts(x, holds):
        counts = jnp.stack([_count(x, s) for s in symbols])
        return jnp.all(counts <= 1) & (jnp.sum(counts) == jnp.where(holds, k, k - 1))

    return Feature(
        name="all-" + "-".join(map(str, symbols)),
        predicate=lambda x: jnp.all(jnp.stack([jnp.any(x == s) for s in symbols])),
        positive=lambda x, d: place(x, d, -1),
        negative=lambda x, d: place(x, d, d[0]),
        reserved=tuple(symbols),
        draw_bounds=lambda seq_len: (k,) + (seq_len,) * k,
        accepts=accepts,
        min_len=k,
        description=f"all of {', '.join(map(str, symbols))} occur (once each); negatives: exactly {k - 1} of them",
    )


def count_at_least(symbol: int, count: int) -> Feature:
    """`symbol` occurs at least `count` times: positives exactly `count`, near-miss negatives exactly `count` - 1."""

    def place(x, d, copies):
        for j in range(copies):
            x = x.at[d[j]].set(symbol)
        return x

    return Feature(
        name=f"count-{symbol}>={count}",
        predicate=lambda x: _count(x, symbol) >= count,
        positive=lambda x, d: place(x, d, count),
        negative=lambda x, d: place(x, d, count - 1),
        reserved=(symbol,),
        draw_bounds=_position_bounds(count),
        accepts=lambda x, holds: _count(x, symbol) == jnp.where(holds, count, count - 1),
        min_len=count,
        description=f"{symbol} occurs >= {count} times (exactly {count}); negatives: exactly {count - 1}",
    )


def ordered(first: int, second: int) -> Feature:
    """`first` occurs before `second` (each exactly once, in positives and negatives alike: the order is the feature)."""

    def place(x, d, forward):
        low, high = jnp.minimum(d[0], d[1]), jnp.maximum(d[0], d[1])
        a, b = (first, second) if forward else (second, first)
        return x.at[low].set(a).at[high].set(b)

    def position(x, symbol):
        return jnp.argmax(x == symbol)

    def accepts(x, holds):
        once = (_count(x, first) == 1) & (_count(x, second) == 1)
        return once & ((position(x, first) < position(x, second)) == holds)

    return Feature(
        name=f"{first}-before-{second}",
        predicate=lambda x: jnp.any(x == first) & jnp.any(x == second) & (position(x, first) < position(x, second)),
        positive=lambda x, d: place(x, d, True),
        negative=lambda x, d: place(x, d, False),
        reserved=(first, second),
        draw_bounds=_position_bounds(2),
        accepts=accepts,
        min_len=2,
        description=f"{first} occurs before {second} (both occur once); negatives: {second} before {first}",
    )


def starts_with(symbol: int) -> Feature:
    """x[0] == `symbol`; near-miss negatives hold `symbol` once elsewhere."""
    return Feature(
        name=f"first-is-{symbol}",
        predicate=lambda x: x[0] == symbol,
        positive=lambda x, d: x.at[0].set(symbol),
        negative=lambda x, d: x.at[d[0] + 1].set(symbol),
        reserved=(symbol,),
        draw_bounds=_after_first_bounds,
        accepts=lambda x, holds: (_count(x, symbol) == 1) & ((x[0] == symbol) == holds),
        min_len=2,
        description=f"the first symbol is {symbol}; negatives: {symbol} once at another position",
    )


def odd_count(symbol: int) -> Feature:
    """`symbol` occurs an odd number of times: 1 or 3 in positives, 0 or 2 in negatives (each with probability 1/2)."""

    def place(x, d, copies_small, copies_large):
        small = x
        for j in range(copies_small):
            small = small.at[d[1 + j]].set(symbol)
        large = x
        for j in range(copies_large):
            large = large.at[d[1 + j]].set(symbol)
        return jnp.where(d[0] == 0, small, large)

    return Feature(
        name=f"odd-count-{symbol}",
        predicate=lambda x: _count(x, symbol) % 2 == 1,
        positive=lambda x, d: place(x, d, 1, 3),
        negative=lambda x, d: place(x, d, 0, 2),
        reserved=(symbol,),
        draw_bounds=lambda seq_len: (2, seq_len, seq_len, seq_len),
        accepts=lambda x, holds: (_count(x, symbol) % 2 == holds.astype(jnp.int32)) & (_count(x, symbol) <= 3),
        min_len=3,
        description=f"{symbol} occurs an odd number of times (1 or 3; negatives 0 or 2)",
    )


def _copy_first_to(x: jax.Array, position) -> jax.Array:
    return x.at[position].set(x[0])


# SPEC §3's positional targets. Each declares one draw in [0, L-1) (first-last and
# prefix-duplicate do not read it), as the original sampler did, so that the original
# tasks draw exactly the same examples as before features became data.
FIRST_LAST = Feature(
    name="first-last", predicate=lambda x: x[0] == x[-1], positive=lambda x, d: _copy_first_to(x, x.shape[0] - 1),
    draw_bounds=_after_first_bounds, min_len=2, min_symbols=2, description="x[0] == x[L-1]")
PREFIX_DUPLICATE = Feature(
    name="prefix-duplicate", predicate=lambda x: x[0] == x[1], positive=lambda x, d: _copy_first_to(x, 1),
    draw_bounds=_after_first_bounds, min_len=2, min_symbols=2, description="x[0] == x[1]")
CONTAINS_FIRST = Feature(
    name="contains-first", predicate=lambda x: jnp.any(x[1:] == x[0]), positive=lambda x, d: _copy_first_to(x, d[0] + 1),
    draw_bounds=_after_first_bounds, min_len=2, min_symbols=2, description="x[0] occurs again in x[1:]")
ADJACENT_DUPLICATE = Feature(
    name="adjacent-duplicate", predicate=lambda x: jnp.any(x[:-1] == x[1:]),
    positive=lambda x, d: x.at[d[0] + 1].set(x[d[0]]),
    draw_bounds=_after_first_bounds, min_len=2, min_symbols=2, description="x[i] == x[i+1] for some i")

for _feature in (
    *(contains(symbol) for symbol in (1, 2, 3, 4)),
    FIRST_LAST, PREFIX_DUPLICATE, CONTAINS_FIRST, ADJACENT_DUPLICATE,
    contains_all((1, 3)), contains_all((1, 3, 4)), contains_all((1, 3, 4, 5)),
    count_at_least(1, 2), count_at_least(1, 3),
    ordered(1, 3), starts_with(1), odd_count(1),
):
    register_feature(_feature)
del _feature
