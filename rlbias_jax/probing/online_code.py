"""The online code as one compiled program (SPEC §5, Voita & Titov 2020).

A *lane* is one probe run: one probing set (the s- or t-probe, or for frozen
probes one (probe, layer) pair), one probe seed. Each lane owns a label-balanced
block order of its set (`blocks.balanced_order`), an initialisation key and a
training key. For block i = 1..10 the lane trains a probe from a fresh
initialisation (the same initial parameters for every block of the lane) on the
prefix [0, end_{i-1}) of its order, and that probe transmits block i: every
example's −log₂ p(y|x) is written into the lane's per-example codelength buffer.
Block 0 costs log₂ K per example. The host then sums blocks in float64
(`codelength.online_codelength`).

All lanes — both probes, all probe seeds (and all layers) — and all their
blocks run as one compiled program, `jit(program)`. `vectorize` chooses how:

- ``"lanes"`` (default): `vmap` over lanes; each lane's ten block trainings run
  one after another in a `lax.scan`, each stopping after its own number of steps.
- ``"lanes_and_blocks"``: `vmap` over lanes and over blocks — the most parallel
  work per step, for an accelerator; a block whose step count is smaller idles,
  masked, until the longest one is done, so it suits `fixed_steps`.
- ``"none"``: `lax.map` over lanes and `lax.scan` over blocks: one program with no
  vmap at all. On a small CPU the work is compute-bound, and batched (vmapped)
  small matmuls can be slower than a sequence of plain ones.

How each block's probe is trained (`Schedule.kind`):

- ``"epochs"`` — the original: `epochs_per_block` passes over the prefix, each a
  fresh random permutation cut into minibatches of `batch_size` (the last one
  smaller, as in a PyTorch DataLoader; masked here so that shapes stay static).
  Block i takes epochs · ceil(end_{i-1} / batch) steps and sees every prefix
  example exactly `epochs` times. The step counts differ per block and are
  dynamic loop bounds, so a short block costs only its own steps.
- ``"fixed_steps"`` — `steps_per_block` steps for every block, each on
  `batch_size` indices drawn uniformly with replacement from [0, end_{i-1}).
  Relative to "N epochs per block" it spends more passes on small prefixes
  (steps · batch / end passes) and fewer on large ones; it is the natural choice
  with `vectorize="lanes_and_blocks"`, where it wastes no masked steps.

Each step minimises the mean cross-entropy over the minibatch (masked examples
excluded) plus (weight_decay / 2) · Σ‖W‖² over weight matrices (every parameter
with ndim ≥ 2; biases and norms are not decayed), with Adam.

`online_code_block_by_block` is the original procedure — a Python loop over
blocks, epochs and minibatches, calling a jitted step — on exactly the same
minibatches; tests use it to check the compiled program, and the benchmark to
time it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlbias_jax.probing.codelength import LN2, OnlineCodelength, example_bits, online_codelength
from rlbias_jax.probing.probes import ProbeModel

SCHEDULES = ("epochs", "fixed_steps")
VECTORIZE = ("lanes", "lanes_and_blocks", "none")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How the probe of each block is trained (static). The defaults are the paper's schedule
    (10 epochs of 64 at lr 1e-4); `ProbeConfig`'s defaults are a cheaper one."""

    kind: str = "epochs"
    batch_size: int = 64
    epochs_per_block: int = 10
    steps_per_block: int = 100
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    eval_batch_size: int = 256

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; known: {', '.join(SCHEDULES)}")
        for name in ("batch_size", "epochs_per_block", "steps_per_block", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def steps(self, ends: np.ndarray) -> np.ndarray:
        """Gradient steps of the probe that transmits each block 1..n-1 (trained on prefix ends[i-1])."""
        prefixes = np.asarray(ends[:-1], dtype=np.int64)
        if self.kind == "epochs":
            return self.epochs_per_block * -(-prefixes // self.batch_size)
        return np.full(len(prefixes), self.steps_per_block, dtype=np.int64)


class Lanes(NamedTuple):
    """One probe run per row (leading axis R).

    data_index: int32[R], which probing set of `inputs`/`labels` the lane codes;
    order: int32[R, N], the lane's block order of that set;
    init_key, train_key: key[R].
    """

    data_index: jax.Array
    order: jax.Array
    init_key: jax.Array
    train_key: jax.Array


class OnlineCodeOutput(NamedTuple):
    """bits float32[R, N]: −log₂ p(y|x) of each example (in the lane's order) under the probe
    that transmitted it (log₂ K in block 0); correct bool[R, N]: whether that probe's argmax
    was right (False in block 0)."""

    bits: jax.Array
    correct: jax.Array


# ONE TRAINING STEP AND ITS MINIBATCHES (shared by the compiled program and the reference)


def _weight_penalty(params) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(params) if leaf.ndim >= 2)


def make_train_step(probe: ProbeModel, schedule: Schedule, optimizer: optax.GradientTransformation) -> Callable:
    """step(state, x, y, mask, dropout_key) -> state, with state = (params, opt_state)."""

    def loss_fn(params, x, y, mask, dropout_key):
        nats = example_bits(probe.apply(params, x, dropout_key), y) * LN2
        weights = mask.astype(jnp.float32)
        loss = jnp.sum(weights * nats) / jnp.maximum(jnp.sum(weights), 1.0)
        if schedule.weight_decay:
            loss = loss + 0.5 * schedule.weight_decay * _weight_penalty(params)
        return loss

    def step(state, x, y, mask, dropout_key):
        params, opt_state = state
        grads = jax.grad(loss_fn)(params, x, y, mask, dropout_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def prefix_permutation(key: jax.Array, prefix: jax.Array, size: int) -> jax.Array:
    """int32[size] whose first `prefix` entries are a uniform random permutation of [0, prefix)."""
    scores = jnp.where(jnp.arange(size) < prefix, jax.random.uniform(key, (size,)), 2.0)
    return jnp.argsort(scores).astype(jnp.int32)


def epoch_minibatch(permutation: jax.Array, prefix: jax.Array, batch: jax.Array, batch_size: int):
    """Positions and mask of minibatch `batch` of an epoch over the prefix (the last one is partial)."""
    slot = batch * batch_size + jnp.arange(batch_size)
    mask = slot < prefix
    return permutation[jnp.minimum(slot, permutation.shape[0] - 1)], mask


def uniform_minibatch(key: jax.Array, prefix: jax.Array, batch_size: int):
    """`batch_size` positions drawn uniformly with replacement from [0, prefix); all valid."""
    return jax.random.randint(key, (batch_size,), 0, prefix), jnp.ones((batch_size,), bool)


def _block_keys(train_key: jax.Array, block: jax.Array):
    """(permutation/minibatch key, dropout key) of one block's training."""
    block_key = jax.random.fold_in(train_key, block)
    return jax.random.fold_in(block_key, 0), jax.random.fold_in(block_key, 1)


# THE COMPILED PROGRAM


class OnlineCode:
    """The online code of `probe` under `schedule` on sets of `num_examples` examples.

    `__call__(inputs, labels, lanes)` runs every lane in one compiled program:
    inputs [M, N, ...] (M probing sets, shared by the lanes that index them),
    labels int32[M, N] -> OnlineCodeOutput. `codelengths(output)` sums the blocks.
    """

    def __init__(self, probe: ProbeModel, schedule: Schedule, ends: np.ndarray, vectorize: str = "lanes"):
        if vectorize not in VECTORIZE:
            raise ValueError(f"unknown vectorize {vectorize!r}; known: {', '.join(VECTORIZE)}")
        self.probe = probe
        self.schedule = schedule
        self.ends = np.asarray(ends, dtype=np.int64)
        self.vectorize = vectorize
        self.optimizer = optax.adam(schedule.learning_rate)
        if vectorize == "none":
            program = lambda inputs, labels, lanes: jax.lax.map(lambda lane: self._lane(inputs, labels, lane), lanes)
        else:
            program = jax.vmap(self._lane, in_axes=(None, None, 0))
        self._program = jax.jit(program)

    def __call__(self, inputs: jax.Array, labels: jax.Array, lanes: Lanes) -> OnlineCodeOutput:
        num_examples = int(self.ends[-1])
        chex.assert_rank(labels, 2)
        if inputs.shape[:2] != labels.shape or labels.shape[1] != num_examples:
            raise ValueError(
                f"inputs {inputs.shape} and labels {labels.shape} must both start with [M, {num_examples}]"
            )
        chex.assert_shape(lanes.order, (lanes.data_index.shape[0], num_examples))
        return self._program(inputs, labels, lanes)

    def _lane(self, inputs, labels, lane: Lanes) -> OnlineCodeOutput:
        schedule, probe = self.schedule, self.probe
        num_examples = int(self.ends[-1])
        chunk = min(schedule.eval_batch_size, num_examples)
        step = make_train_step(probe, schedule, self.optimizer)
        initial_params = probe.init(lane.init_key)

        def gather(positions):
            index = lane.order[positions]
            return inputs[lane.data_index, index], labels[lane.data_index, index]

        def train_block(block, prefix):
            sample_key, dropout_key = _block_keys(lane.train_key, block)
            state = (initial_params, self.optimizer.init(initial_params))

            def take_step(state, positions, mask, step_index):
                x, y = gather(positions)
                return step(state, x, y, mask, jax.random.fold_in(dropout_key, step_index))

            if schedule.kind == "fixed_steps":

                def fixed_step(i, state):
                    positions, mask = uniform_minibatch(jax.random.fold_in(sample_key, i), prefix, schedule.batch_size)
                    return take_step(state, positions, mask, i)

                return jax.lax.fori_loop(0, schedule.steps_per_block, fixed_step, state)[0]

            num_batches = (prefix + schedule.batch_size - 1) // schedule.batch_size

            def epoch(e, state):
                permutation = prefix_permutation(jax.random.fold_in(sample_key, e), prefix, num_examples)

                def minibatch(b, state):
                    positions, mask = epoch_minibatch(permutation, prefix, b, schedule.batch_size)
                    return take_step(state, positions, mask, e * num_batches + b)

                return jax.lax.fori_loop(0, num_batches, minibatch, state)

            return jax.lax.fori_loop(0, schedule.epochs_per_block, epoch, state)[0]

        def evaluate_block(params, start, end, buffers):
            """Write the costs of positions [start, end) into the (N + chunk)-long buffers."""

            def evaluate_chunk(c, buffers):
                offset = start + c * chunk
                positions = offset + jnp.arange(chunk)
                valid = positions < end
                x, y = gather(jnp.minimum(positions, num_examples - 1))
                logits = probe.apply(params, x, None)
                values = (example_bits(logits, y), jnp.argmax(logits, axis=-1) == y)
                return tuple(
                    jax.lax.dynamic_update_slice(
                        buffer, jnp.where(valid, value, jax.lax.dynamic_slice(buffer, (offset,), (chunk,))), (offset,)
                    )
                    for buffer, value in zip(buffers, values)
                )

            return jax.lax.fori_loop(0, (end - start + chunk - 1) // chunk, evaluate_chunk, buffers)

        prefixes = jnp.asarray(self.ends[:-1], jnp.int32)
        block_ends_ = jnp.asarray(self.ends[1:], jnp.int32)
        blocks = jnp.arange(1, len(self.ends), dtype=jnp.int32)
        empty = (jnp.zeros(num_examples + chunk, jnp.float32), jnp.zeros(num_examples + chunk, bool))

        def code_block(buffers, block_prefix_end):
            block, prefix, end = block_prefix_end
            params = train_block(block, prefix)
            return evaluate_block(params, prefix, end, buffers), None

        if self.vectorize != "lanes_and_blocks":
            bits, correct = jax.lax.scan(code_block, empty, (blocks, prefixes, block_ends_))[0]
        else:
            per_block = jax.vmap(lambda *args: code_block(empty, args)[0])(blocks, prefixes, block_ends_)
            bits, correct = per_block[0].sum(axis=0), per_block[1].any(axis=0)
        first_block = jnp.arange(num_examples + chunk) < self.ends[0]
        bits = jnp.where(first_block, math.log2(probe.num_classes), bits)
        return OnlineCodeOutput(bits=bits[:num_examples], correct=correct[:num_examples])

    def codelengths(self, output: OnlineCodeOutput) -> list[OnlineCodelength]:
        """Per-lane block costs, summed on the host in float64."""
        bits = np.asarray(output.bits)
        return [online_codelength(row, self.ends, self.probe.num_classes) for row in bits]

    def final_accuracies(self, output: OnlineCodeOutput) -> np.ndarray:
        """Accuracy of each lane's last probe (trained on blocks 0..n-2) on the last block, which it never saw."""
        return np.asarray(output.correct)[:, self.ends[-2] :].mean(axis=1)


# THE ORIGINAL PROCEDURE, BLOCK AFTER BLOCK (reference and benchmark baseline)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _reference_init(probe: ProbeModel, schedule: Schedule, key):
    params = probe.init(key)
    return params, optax.adam(schedule.learning_rate).init(params)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _reference_step(probe, schedule, state, inputs, labels, data_index, order, positions, mask, dropout_key):
    step = make_train_step(probe, schedule, optax.adam(schedule.learning_rate))
    index = order[positions]
    return step(state, inputs[data_index, index], labels[data_index, index], mask, dropout_key)


@functools.partial(jax.jit, static_argnums=0)
def _reference_evaluate(probe, params, inputs, labels, data_index, order, positions):
    index = order[positions]
    logits = probe.apply(params, inputs[data_index, index], None)
    y = labels[data_index, index]
    return example_bits(logits, y), jnp.argmax(logits, axis=-1) == y


_prefix_permutation = jax.jit(prefix_permutation, static_argnums=2)
_epoch_minibatch = jax.jit(epoch_minibatch, static_argnums=3)
_uniform_minibatch = jax.jit(uniform_minibatch, static_argnums=2)


def online_code_block_by_block(
    probe: ProbeModel,
    schedule: Schedule,
    ends: np.ndarray,
    inputs: jax.Array,
    labels: jax.Array,
    lanes: Lanes,
) -> OnlineCodeOutput:
    """The same online code as `OnlineCode`, lane after lane, block after block, minibatch after
    minibatch from Python, with one jitted step and one jitted evaluation — how the original code
    runs. It draws exactly the same minibatches and dropout masks, so its output matches the
    compiled program's up to floating-point reordering. (Compiled functions are cached across
    calls for the same `probe` object and `schedule`.)"""
    ends = np.asarray(ends, dtype=np.int64)
    num_examples = int(ends[-1])
    chunk = min(schedule.eval_batch_size, num_examples)
    all_bits, all_correct = [], []
    for lane in range(lanes.data_index.shape[0]):
        data_index, order = lanes.data_index[lane], lanes.order[lane]
        bits = np.zeros(num_examples, np.float32)
        correct = np.zeros(num_examples, bool)
        bits[: ends[0]] = math.log2(probe.num_classes)
        for block in range(1, len(ends)):
            prefix, end = int(ends[block - 1]), int(ends[block])
            sample_key, dropout_key = _block_keys(lanes.train_key[lane], block)
            state = _reference_init(probe, schedule, lanes.init_key[lane])

            def train_step(state, positions, mask, step_index):
                key = jax.random.fold_in(dropout_key, step_index)
                return _reference_step(probe, schedule, state, inputs, labels, data_index, order, positions, mask, key)

            if schedule.kind == "fixed_steps":
                for i in range(schedule.steps_per_block):
                    positions, mask = _uniform_minibatch(jax.random.fold_in(sample_key, i), prefix, schedule.batch_size)
                    state = train_step(state, positions, mask, i)
            else:
                num_batches = -(-prefix // schedule.batch_size)
                for e in range(schedule.epochs_per_block):
                    permutation = _prefix_permutation(jax.random.fold_in(sample_key, e), prefix, num_examples)
                    for b in range(num_batches):
                        positions, mask = _epoch_minibatch(permutation, prefix, b, schedule.batch_size)
                        state = train_step(state, positions, mask, e * num_batches + b)
            for offset in range(prefix, end, chunk):
                positions = np.minimum(np.arange(offset, offset + chunk), num_examples - 1)
                chunk_bits, chunk_correct = _reference_evaluate(probe, state[0], inputs, labels, data_index, order, positions)
                take = min(chunk, end - offset)
                bits[offset : offset + take] = np.asarray(chunk_bits)[:take]
                correct[offset : offset + take] = np.asarray(chunk_correct)[:take]
        all_bits.append(bits)
        all_correct.append(correct)
    return OnlineCodeOutput(bits=np.stack(all_bits), correct=np.stack(all_correct))
