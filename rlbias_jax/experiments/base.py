"""What an experiment is to the runner: the parts that differ between the toy and the
natural-language experiments, behind one protocol (`Experiment`).

The runner (`rlbias_jax.experiments.runner`) does everything else once: the run
directory and its manifest, the probe phase, the untrained baseline, the chunked sweep
with checkpoints and resume, the evaluation, the report. The algorithm (`rlbias_jax.rl`)
sees only a `Policy` and arrays; it never learns which experiment it serves.

Keys: every stream of randomness is `stream(jax.random.key(run.seed), tag, *indices)`
with one `KeyTag` per purpose, so that two experiments (or two phases) never share a key
by accident.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Mapping, Protocol

import jax

from rlbias_jax.config import Config
from rlbias_jax.partitions import PARTITION_FEATURES, PARTITION_LABELS, PARTITIONS
from rlbias_jax.probing.extractability import ProbeTask
from rlbias_jax.probing.probes import ProbeModel
from rlbias_jax.rl.train import Policy, RunData, RunState

__all__ = [
    "PARTITIONS", "PARTITION_FEATURES", "PARTITION_LABELS", "Experiment", "KeyTag", "Progress", "RunSpec",
    "Shared", "run_specs", "stream",
]

Progress = Callable[[str], None]


class KeyTag(enum.IntEnum):
    """Streams derived from the run seed, kept apart by `fold_in` tags."""

    INIT = 0  # a run's initial parameters (toy: by seed index)
    DATA = 1  # a run's training set (toy: by task and seed)
    ROLLOUT = 2  # a run's rollout stream (by task, rate index, seed)
    TEST = 3  # held-out test sets (toy: by task)
    EVAL = 4  # evaluation sampling (by task, rate index, seed, partition)


def stream(base: jax.Array, tag: KeyTag, *indices: int) -> jax.Array:
    """fold_in(base, tag), then fold_in each index in turn."""
    key = jax.random.fold_in(base, int(tag))
    for index in indices:
        key = jax.random.fold_in(key, index)
    return key


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Identity of one run of the sweep."""

    task_id: int
    task_name: str
    s_only_rate: float
    rate_index: int
    seed: int


def run_specs(config: Config, task_names: Mapping[int, str]) -> list[RunSpec]:
    """Runs in a fixed order: task (as `task_names`, the configured tasks, orders them), then rate, then seed."""
    return [
        RunSpec(task_id=task_id, task_name=task_name, s_only_rate=rate, rate_index=rate_index, seed=seed)
        for task_id, task_name in task_names.items()
        for rate_index, rate in enumerate(config.sweep.s_only_rates)
        for seed in range(config.sweep.seeds)
    ]


@dataclasses.dataclass(frozen=True)
class Shared:
    """What every run reads and never trains, passed once into the compiled programs.

    value: a pytree (or None); with `per_run`, it has a leading run axis [R] (padded and
    sharded like the states), else it is broadcast to every run (vmap in_axes None).
    """

    value: object
    per_run: bool

    @property
    def axis(self) -> int | None:
        return 0 if self.per_run else None


class Experiment(Protocol):
    """The parts of an experiment the runner cannot know (docs/experiments: toy.py, nl.py)."""

    config: Config
    task_names: Mapping[int, str]  # the configured tasks, in order: id -> name

    def check_inputs(self) -> None:
        """The files and folders the config names exist; ConfigError naming the field (before any compute)."""

    def prepare(self, progress: Progress) -> None:
        """Load what the phases share (models, tokenizers, corpora); called once, before any phase."""

    # PROBING (SPEC §5)

    @property
    def probe_mode(self) -> str:
        """The probe mode written to the extractability tables."""

    def probe_model(self) -> ProbeModel:
        """The probe the online code trains on every block."""

    def probe_task(self, key: jax.Array, task_id: int) -> ProbeTask:
        """One task's probing sets (s and t), keys and (frozen mode) features, from the phase key."""

    # THE SWEEP (SPEC §4, §6)

    def initial_states(self, specs: list[RunSpec]) -> RunState:
        """Stacked RunStates [R]."""

    def training_data(self, specs: list[RunSpec]) -> RunData:
        """Each run's fixed training set, stacked [R, N, P]."""

    def shared(self, specs: list[RunSpec]) -> Shared:
        """Frozen parameters, the KL reference and reward tables the programs read."""

    def build_policy(self, shared) -> tuple[Policy, object]:
        """(policy, reference parameters) from one run's view of `Shared.value` (may be traced)."""

    def test_prompts(self, task_id: int, partition: str):
        """Held-out prompts of one task and partition: int32[n, P] (shared by every run of the task)."""

    def score(self, raw_reward: float) -> float:
        """A results row's score from a mean raw reward (the toy: itself; NL: the normalised score)."""

    def sweep_description(self, specs: list[RunSpec]) -> str:
        """The progress line announcing the sweep; `{devices}` is filled in by the runner."""

    def chunk_note(self, rows: list[dict], iteration: int) -> str:
        """Extra text for a chunk's progress line, from its curve rows ("" for none)."""

