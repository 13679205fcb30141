"""The evidence sweep as one compiled program.

All runs (task × s-only rate × seed) share one jitted function: `jax.vmap` over
a leading run axis, `lax.scan` over the iterations of a chunk. What is per run (states,
training data) and what is shared (frozen weights, reference, reward tables) is the
caller's choice, through `build_policy` and `shared_axis`. The host loop that runs chunk
after chunk, with progress and checkpoints in between, is
`rlbias_jax.experiments.sweep_phase`.
The run axis is sharded over every device (padded to a multiple of the device
count, at least two runs per device; padding runs are dropped from the results),
and each device runs the single-device program on its share of the runs.

With `bitwise_across_devices` (`run.bitwise_across_devices`), results do not depend on
the device or process count (bitwise, on CPU): every device runs the same per-run
arithmetic whatever its number of runs. Three things make it so, found by comparing a vmapped batch with its slices and with its
multi-device versions: XLA:CPU's YNNPACK reduction fusions sum in a batch-size-
dependent order (switched off by `compiler_options`, which costs speed: it is the
opt-in; by default the fusions stay on); a batch of one run is
simplified into different reductions than a batch of two or more (hence at least
two runs per device); and programs compiled for several devices go through other
simplifications than single-device ones (hence `distributed.ShardwiseProgram`
rather than one SPMD program). See docs/scale_out.md.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rlbias_jax import distributed
from rlbias_jax.config import AlgorithmConfig, PPOConfig
from rlbias_jax.rl.train import RunData, RunState, partition_scores, ppo_iteration


def run_mesh(devices=None) -> Mesh:
    """A 1-D mesh over the local (or given) devices, axis name 'runs'."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices, ("runs",))


MIN_RUNS_PER_DEVICE = 2  # a run axis of size 1 compiles to differently ordered reductions


def padded_run_count(num_runs: int, mesh: Mesh, bitwise_across_devices: bool = False) -> int:
    """Runs per program after padding. Only `bitwise_across_devices` needs two runs per device; else
    a single run is not padded (a padding run would double its cost)."""
    per_device = max(-(-num_runs // mesh.size), MIN_RUNS_PER_DEVICE if bitwise_across_devices else 1)
    return per_device * mesh.size


def compiler_options(bitwise_across_devices: bool) -> dict | None:
    """XLA options for programs vmapped over runs: with `bitwise_across_devices`,
    batch-size-invariant reductions on CPU.

    YNNPACK's reduce fusions (XLA:CPU) order their sums by the batch shape, so a device
    holding 4 runs and one holding 1 would compute slightly different numbers."""
    if bitwise_across_devices and jax.default_backend() == "cpu":
        return {"xla_cpu_experimental_ynn_fusion_type": ""}
    return None


def pad_runs(tree, num_runs: int, padded: int):
    """Repeat the last run so the run axis divides over the devices."""
    if padded == num_runs:
        return tree
    return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded - num_runs, axis=0)]), tree)


def shard_runs(tree, mesh: Mesh):
    """Place every leaf with its leading (run) axis split over the mesh (of one or many processes)."""
    return distributed.place_runs(tree, mesh)


def make_train_chunk(build_policy: Callable, config: PPOConfig, shared_axis: int | None, *,
                     bitwise_across_devices: bool = False, algorithm: AlgorithmConfig | None = None) -> Callable:
    """jit(vmap(scan(ppo_iteration))) per device: (states[R], data[R], shared, length) -> (states, metrics[R, length]).

    `algorithm` (the config's `[algorithm]`; None = PPO) picks PPO, GRPO or RLOO inside the
    same program: the iteration's advantages and loss differ, nothing else.

    build_policy(shared) -> (Policy, reference parameters or None): what one run's
    iterations need from its view of `shared` — the frozen weights, the KL reference and
    the reward tables an experiment passes in. `shared_axis` = 0: `shared` has a leading
    run axis (e.g. each run's own reference); None: one copy broadcast to every run.
    `length` (iterations in the chunk) is static; a shorter last chunk compiles once more.
    """

    def train_chunk(states: RunState, data: RunData, shared, length: int):
        def one_run(state: RunState, run_data: RunData, run_shared):
            policy, reference_params = build_policy(run_shared)

            def body(carry: RunState, _):
                return ppo_iteration(carry, run_data, reference_params, policy, config, algorithm)

            return jax.lax.scan(body, state, None, length=length)

        return jax.vmap(one_run, in_axes=(0, 0, shared_axis))(states, data, shared)

    jitted = jax.jit(train_chunk, static_argnames=("length",), donate_argnums=(0,),
                     compiler_options=compiler_options(bitwise_across_devices))
    return distributed.ShardwiseProgram(jitted)


def make_evaluate(build_policy: Callable, shared_axis: int | None, *, bitwise_across_devices: bool = False) -> Callable:
    """jit(vmap(partition_scores)) over runs: (params[R], shared, prompts[R, n, P], labels[R, n], keys[R], greedy=) ->
    (mean raw reward[R], its standard error over the n prompts [R]).

    Build it once per sweep: the baseline and the final evaluation share the compiled program."""

    def evaluate(params, shared, prompts, labels, keys, greedy: bool):
        def one_run(run_params, run_shared, run_prompts, run_labels, key):
            policy, _ = build_policy(run_shared)
            scores = partition_scores(policy, run_params, run_prompts, run_labels, key, greedy)
            return scores.mean(), scores.std(ddof=1) / jnp.sqrt(scores.shape[0])

        return jax.vmap(one_run, in_axes=(0, shared_axis, 0, 0, 0))(params, shared, prompts, labels, keys)

    return jax.jit(evaluate, static_argnames=("greedy",), compiler_options=compiler_options(bitwise_across_devices))
