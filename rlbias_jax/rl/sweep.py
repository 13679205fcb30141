"""The evidence sweep as one compiled program.

All runs (task × s-only rate × seed) share one jitted function: `jax.vmap` over
a leading run axis, `lax.scan` over the iterations of a chunk. The host loop
runs chunk after chunk, printing progress and saving checkpoints in between.
The run axis is sharded over every device (padded to a multiple of the device
count, at least two runs per device; padding runs are dropped from the results),
and each device runs the single-device program on its share of the runs.

Results do not depend on the device or process count (bitwise, on CPU): every
device runs the same per-run arithmetic whatever its number of runs. Three things
make it so, found by comparing a vmapped batch with its slices and with its
multi-device versions: XLA:CPU's YNNPACK reduction fusions sum in a batch-size-
dependent order (switched off by `compiler_options`); a batch of one run is
simplified into different reductions than a batch of two or more (hence at least
two runs per device); and programs compiled for several devices go through other
simplifications than single-device ones (hence `distributed.ShardwiseProgram`
rather than one SPMD program). See docs/scale_out.md.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rlbias_jax import distributed
from rlbias_jax.config import PPOConfig
from rlbias_jax.rl.train import Policy, RunData, RunState, evaluate_partition, ppo_iteration


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Identity of one run of the sweep."""

    task_id: int
    task_name: str
    s_only_rate: float
    rate_index: int
    seed: int


def run_mesh(devices=None) -> Mesh:
    """A 1-D mesh over the local (or given) devices, axis name 'runs'."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices, ("runs",))


MIN_RUNS_PER_DEVICE = 2  # a run axis of size 1 compiles to differently ordered reductions


def padded_run_count(num_runs: int, mesh: Mesh) -> int:
    per_device = max(-(-num_runs // mesh.size), MIN_RUNS_PER_DEVICE)
    return per_device * mesh.size


def compiler_options() -> dict | None:
    """XLA options for programs vmapped over runs: batch-size-invariant reductions on CPU.

    YNNPACK's reduce fusions (XLA:CPU) order their sums by the batch shape, so a device
    holding 4 runs and one holding 1 would compute slightly different numbers."""
    if jax.default_backend() == "cpu":
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


def make_train_chunk(policy: Policy, config: PPOConfig, per_run_reference: bool) -> Callable:
    """jit(vmap(scan(ppo_iteration))) per device: (states[R], data[R], reference, length) -> (states, metrics[R, length]).

    `length` (iterations in the chunk) is static; a shorter last chunk compiles once more."""
    reference_axis = 0 if per_run_reference else None

    def train_chunk(states: RunState, data: RunData, reference, length: int):
        def one_run(state: RunState, run_data: RunData, reference_params):
            def body(carry: RunState, _):
                return ppo_iteration(carry, run_data, reference_params, policy, config)

            return jax.lax.scan(body, state, None, length=length)

        return jax.vmap(one_run, in_axes=(0, 0, reference_axis))(states, data, reference)

    jitted = jax.jit(train_chunk, static_argnames=("length",), donate_argnums=(0,), compiler_options=compiler_options())
    return distributed.ShardwiseProgram(jitted)


@functools.lru_cache(maxsize=4)
def make_evaluate(policy: Policy) -> Callable:
    """jit(vmap(evaluate_partition)) over runs: (params[R], prompts[R,n,P], labels[R,n], keys[R]) -> scores[R].

    Cached per policy: the baseline and the final evaluation share one compiled program."""

    def evaluate(params, prompts, labels, keys, greedy: bool):
        return jax.vmap(lambda p, x, y, k: evaluate_partition(policy, p, x, y, k, greedy))(params, prompts, labels, keys)

    return jax.jit(evaluate, static_argnames=("greedy",), compiler_options=compiler_options())


def decodings(greedy: bool) -> list[str]:
    """The evaluation's decodings: sampled always, greedy when configured (eval.greedy)."""
    return ["sample", "greedy"] if greedy else ["sample"]


def evaluation_rows(
    specs: list[RunSpec],
    states: RunState,
    partitions: tuple[str, ...],
    decoding_names: list[str],
    partition_inputs: Callable[[str], tuple[jax.Array, jax.Array, jax.Array]],
    evaluate: Callable[..., jax.Array],
    score_of: Callable[[float], float] = float,
) -> list[dict]:
    """The rows of results.csv (docs/run_directory.md) for every run × partition × decoding.

    partition_inputs(partition) -> (prompts[R, n, P], labels[R, n], keys[R]), built once per
    partition; evaluate(params[R], prompts, labels, keys, greedy=) -> mean raw reward[R];
    score_of maps a raw mean reward to the row's score. Padding runs (beyond specs) are dropped.
    """
    run_count = len(specs)
    params = jax.tree.map(lambda x: x[:run_count], states.train.params)
    failed = np.asarray(states.failed)[:run_count]
    failed_iteration = np.asarray(states.failed_iteration)[:run_count]
    rows = []
    for partition in partitions:
        prompts, labels, keys = partition_inputs(partition)
        for decoding in decoding_names:
            rewards = np.asarray(evaluate(params, prompts, labels, keys, greedy=decoding == "greedy"))
            for index, spec in enumerate(specs):
                rows.append({
                    "task_id": spec.task_id,
                    "task_name": spec.task_name,
                    "s_only_rate": spec.s_only_rate,
                    "seed": spec.seed,
                    "decoding": decoding,
                    "partition": partition,
                    "score": float(score_of(rewards[index])),
                    "raw_reward": float(rewards[index]),
                    "n_examples": int(prompts.shape[1]),
                    "status": "failed" if failed[index] else "ok",
                    "failed_iteration": int(failed_iteration[index]),
                })
    return rows


@dataclasses.dataclass
class ChunkReport:
    iteration: int
    total_iterations: int
    seconds: float
    episodes: int
    reward_mean: float
    failed_runs: int

    def line(self) -> str:
        rate = self.episodes / max(self.seconds, 1e-9)
        return (
            f"iteration {self.iteration:>4}/{self.total_iterations}  reward {self.reward_mean:.3f}  "
            f"{rate:,.0f} episodes/s  failed runs {self.failed_runs}"
        )


def metrics_to_rows(metrics: dict, specs: list[RunSpec], first_iteration: int) -> list[dict]:
    """Chunk metrics {name: [R_padded, chunk]} -> one row per run × iteration (padding dropped)."""
    host = distributed.to_host(dict(metrics))
    chunk = next(iter(host.values())).shape[1]
    rows = []
    for run_index, spec in enumerate(specs):
        for step in range(chunk):
            row = {
                "task_id": spec.task_id,
                "task_name": spec.task_name,
                "s_only_rate": spec.s_only_rate,
                "seed": spec.seed,
                "iteration": first_iteration + step,
            }
            row.update({name: float(values[run_index, step]) for name, values in sorted(host.items())})
            rows.append(row)
    return rows


def run_chunks(
    train_chunk: Callable,
    states: RunState,
    data: RunData,
    reference,
    *,
    specs: list[RunSpec],
    start_iteration: int,
    total_iterations: int,
    chunk_iterations: int,
    episodes_per_iteration: int,
    on_chunk: Callable[[RunState, list[dict], ChunkReport], None],
) -> RunState:
    """Host loop over compiled chunks; `on_chunk` gets the state, the curve rows and a progress report."""
    iteration = start_iteration
    while iteration < total_iterations:
        length = min(chunk_iterations, total_iterations - iteration)
        started = time.perf_counter()
        states, metrics = train_chunk(states, data, reference, length=length)
        jax.block_until_ready(states)
        seconds = time.perf_counter() - started
        # curves hold only deterministic values (timings go to ChunkReport), so that a
        # resumed or re-run sweep writes byte-identical curves
        rows = metrics_to_rows(metrics, specs, iteration)
        iteration += length
        rewards = np.asarray([row["env/reward_mean"] for row in rows if row["iteration"] == iteration - 1])
        failed = int(distributed.to_host(states.failed)[: len(specs)].sum())
        report = ChunkReport(
            iteration=iteration,
            total_iterations=total_iterations,
            seconds=seconds,
            episodes=episodes_per_iteration * length * len(specs),
            reward_mean=float(rewards.mean()),
            failed_runs=failed,
        )
        on_chunk(states, rows, report)
    return states
