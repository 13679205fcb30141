"""Relative extractability of each task's target feature: MDL(s) / MDL(t) (SPEC §5).

`measure(code, mode, seeds, tasks)` runs, per task, the online code of both probes
(t-probe: both = 1 vs s-only = 0; s-probe: s-only = 1 vs neither = 0) × all probe
seeds (× all layers in frozen mode) as one compiled program. An experiment
(`rlbias_jax.experiments`) supplies each task's label-balanced probing sets, keys and,
in frozen mode, the hidden states to probe (`ProbeTask`), and the probe model. Probe
seeds give mean ± SEM; the ratio's SEM is propagated to first order. The result holds
the rows of `extractability.csv`, `mdl.csv` and `mdl_blocks.csv` (docs/run_directory.md).

Probe modes (config.probe.mode):

- "finetune": a model trained whole with a classification head, freshly initialised
  for every block (toy: the SPEC §5 encoder; NL: the pretrained LM plus a new head).
- "policy": the RL policy's own architecture and initialisation, read out at the last
  position (toy); for a pretrained policy it is the same thing as "finetune".
- "frozen": linear or MLP probes on the last-position hidden state of every layer
  (embeddings = layer 0) of a frozen model (`frozen_lanes`: any LM that returns
  `layer_hidden`).

Within a seed, the s- and t-probes share the initialisation, so that both features are
measured on the same model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax.config import Config
from rlbias_jax.probing.blocks import balanced_order, block_starts
from rlbias_jax.probing.online_code import Lanes, OnlineCode, Schedule

PROBE_MODES = ("finetune", "policy", "frozen")
PROBES = ("s", "t")
# (label 1, label 0) partitions of each probing set.
PROBE_PARTITIONS = {"s": ("s_only", "neither"), "t": ("both", "s_only")}

EXTRACTABILITY_COLUMNS = [
    "task_id", "task_name", "probe_mode", "layer", "mdl_s_bits", "mdl_s_sem", "mdl_t_bits", "mdl_t_sem",
    "relative_extractability", "relative_extractability_sem", "compression_s", "compression_t",
    "accuracy_s", "accuracy_t", "uniform_bits", "n_seeds", "censored", "censored_reason",
]
MDL_COLUMNS = [
    "task_id", "task_name", "probe_mode", "layer", "probe", "probe_seed", "mdl_bits", "uniform_bits", "compression", "accuracy",
]
BLOCK_COLUMNS = [
    "task_id", "task_name", "probe_mode", "layer", "probe", "probe_seed", "block", "block_start", "block_end", "codelength_bits",
]


@dataclasses.dataclass
class ExtractabilityResult:
    """Rows of the three probing tables (exactly the columns of docs/run_directory.md)."""

    min_accuracy: float  # config.probe.min_accuracy: rows with a probe below it are censored
    extractability_rows: list[dict] = dataclasses.field(default_factory=list)
    mdl_rows: list[dict] = dataclasses.field(default_factory=list)
    block_rows: list[dict] = dataclasses.field(default_factory=list)
    wall_time_s: dict[int, float] = dataclasses.field(default_factory=dict)  # per task, compilation included

    def add_task(self, task_id: int, task_name: str, mode: str, infos: list[LaneInfo], code: OnlineCode, output,
                 started: float) -> str:
        """Append one task's `task_rows` and its wall time since `started`; return its progress line."""
        summary, mdl_rows, block_rows = task_rows(task_id, task_name, mode, infos, code, output, self.min_accuracy)
        self.extractability_rows += summary
        self.mdl_rows += mdl_rows
        self.block_rows += block_rows
        self.wall_time_s[task_id] = time.perf_counter() - started
        headline = summary[-1]
        return (
            f"  task {task_id} {task_name}: MDL(s) = {headline['mdl_s_bits']:.1f}, "
            f"MDL(t) = {headline['mdl_t_bits']:.1f} bits, ratio {headline['relative_extractability']:.3f} "
            f"± {headline['relative_extractability_sem']:.3f} ({len(infos)} probe runs, {self.wall_time_s[task_id]:.1f} s)"
            + (f"; CENSORED: {headline['censored_reason']}" if headline["censored"] else "")
        )

    def write(self, run_dir: Path) -> None:
        """Write extractability.csv, mdl.csv and mdl_blocks.csv atomically (temporary file + rename)."""
        from rlbias_jax.runs import atomic_write_csv

        run_dir = Path(run_dir)
        atomic_write_csv(run_dir / "extractability.csv", self.extractability_rows, EXTRACTABILITY_COLUMNS)
        atomic_write_csv(run_dir / "mdl.csv", self.mdl_rows, MDL_COLUMNS)
        atomic_write_csv(run_dir / "mdl_blocks.csv", self.block_rows, BLOCK_COLUMNS)


# STATISTICS


def mean_and_sem(values) -> tuple[float, float]:
    """Mean and standard error of the mean (ddof = 1; NaN for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    sem = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(np.mean(values)), sem


def relative_extractability(mdl_s, mdl_t) -> tuple[float, float]:
    """MDL(s) / MDL(t) of the seed means, and its SEM by first-order error propagation
    (independent errors): σ_R = R · sqrt((σ_s / s)² + (σ_t / t)²)."""
    mean_s, sem_s = mean_and_sem(mdl_s)
    mean_t, sem_t = mean_and_sem(mdl_t)
    ratio = mean_s / mean_t
    return ratio, ratio * math.sqrt((sem_s / mean_s) ** 2 + (sem_t / mean_t) ** 2)


# LANES: ONE PROBE RUN PER (PROBE, SEED[, LAYER])


@dataclasses.dataclass(frozen=True)
class LaneInfo:
    probe: str
    seed: int
    layer: int  # -1 unless frozen


def _lanes(keys: dict, labels: np.ndarray, infos: list[LaneInfo], data_index: list[int], init_index: list[int]) -> Lanes:
    orders = [balanced_order(jax.random.fold_in(keys["order"], i), labels[d]) for i, d in enumerate(data_index)]
    return Lanes(
        data_index=jnp.asarray(data_index, jnp.int32),
        order=jnp.asarray(np.stack(orders)),
        init_key=jnp.stack([jax.random.fold_in(keys["init"], i) for i in init_index]),
        train_key=jnp.stack([jax.random.fold_in(keys["train"], i) for i in range(len(infos))]),
    )


def model_lanes(keys: dict, tokens: jax.Array, labels: jax.Array, seeds: int):
    """Finetune/policy modes: inputs [2, N, T] (s, t); one lane per (seed, probe)."""
    infos = [LaneInfo(probe, seed, -1) for seed in range(seeds) for probe in PROBES]
    data_index = [PROBES.index(info.probe) for info in infos]
    return tokens, labels, infos, _lanes(keys, np.asarray(labels), infos, data_index, [info.seed for info in infos])


def frozen_lanes(keys: dict, tokens: jax.Array, labels: jax.Array, seeds: int, features_fn: Callable[[int, jax.Array], jax.Array]):
    """Frozen mode: features_fn(seed, tokens[N, T]) -> [L + 1, N, D] from the seed's frozen model.

    inputs [seeds · 2 · (L + 1), N, D]; one lane per (seed, probe, layer); lanes of the same
    (seed, layer) share the probe initialisation.
    """
    features, feature_labels, infos, data_index, init_index = [], [], [], [], []
    for seed in range(seeds):
        for p, probe in enumerate(PROBES):
            layers = features_fn(seed, tokens[p])
            for layer in range(layers.shape[0]):
                data_index.append(len(features))
                features.append(layers[layer])
                feature_labels.append(labels[p])
                infos.append(LaneInfo(probe, seed, layer))
                init_index.append(seed * layers.shape[0] + layer)
    inputs, all_labels = jnp.stack(features), jnp.stack(feature_labels)
    return inputs, all_labels, infos, _lanes(keys, np.asarray(all_labels), infos, data_index, init_index)


# ONE TASK


def make_schedule(config: Config) -> Schedule:
    probe = config.probe
    return Schedule(
        kind=probe.schedule,
        batch_size=probe.batch_size,
        epochs_per_block=probe.epochs_per_block,
        steps_per_block=probe.steps_per_block,
        learning_rate=probe.learning_rate,
        weight_decay=probe.weight_decay,
        eval_batch_size=probe.eval_batch_size,
    )


@dataclasses.dataclass(frozen=True)
class ProbeTask:
    """One task's probing input, as an experiment builds it.

    tokens: int32[2, N, T], the s- then the t-probing set (`PROBES` order);
    labels: int32[2, N]; keys: {"order", "init", "train"} of this task;
    features_fn: frozen mode only, (seed, tokens[N, T]) -> [L + 1, N, D] hidden states.
    """

    task_id: int
    task_name: str
    tokens: jax.Array
    labels: jax.Array
    keys: dict
    features_fn: Callable[[int, jax.Array], jax.Array] | None = None


def task_rows(task_id: int, task_name: str, mode: str, infos: list[LaneInfo], code: OnlineCode, output,
              min_accuracy: float) -> tuple[list, list, list]:
    """One task's rows of extractability.csv (per layer; frozen mode adds layer -1, the best
    layer per probe), mdl.csv (per lane) and mdl_blocks.csv (per lane and block) from the
    online code's `output` for lanes `infos`; `min_accuracy` decides `censored`."""
    codelengths = code.codelengths(output)
    accuracies = code.final_accuracies(output)
    base = {"task_id": task_id, "task_name": task_name, "probe_mode": mode}
    starts = block_starts(code.ends)
    mdl_rows, block_rows = [], []
    for info, codelength, accuracy in zip(infos, codelengths, accuracies):
        keys = {**base, "layer": info.layer, "probe": info.probe, "probe_seed": info.seed}
        mdl_rows.append({**keys, "mdl_bits": codelength.mdl_bits, "uniform_bits": codelength.uniform_bits,
                         "compression": codelength.compression, "accuracy": float(accuracy)})
        for block, bits in enumerate(codelength.block_bits):
            block_rows.append({**keys, "block": block, "block_start": int(starts[block]),
                               "block_end": int(code.ends[block]), "codelength_bits": float(bits)})
    summary = [_summary_row(base, layer, [r for r in mdl_rows if r["layer"] == layer], min_accuracy)
               for layer in sorted({info.layer for info in infos})]
    if mode == "frozen":
        summary.append(_best_layer_row(base, summary, min_accuracy))
    return summary, mdl_rows, block_rows


def _censoring(accuracy: dict[str, float], min_accuracy: float) -> dict:
    """Lovering's control (SPEC §8): a probe below `min_accuracy` did not learn its feature, so
    its MDL is a floor and the ratio is censored. The report applies the same rule
    (rlbias_jax.analysis.tables.censoring) to tables written without these columns."""
    reasons = [f"{probe}-probe accuracy {accuracy[probe]:.2f} < {min_accuracy:.2f}"
               for probe in PROBES if accuracy[probe] < min_accuracy]
    return {"censored": bool(reasons), "censored_reason": "; ".join(reasons)}


def _summary_row(base: dict, layer: int, rows: list[dict], min_accuracy: float) -> dict:
    mdl = {probe: [r["mdl_bits"] for r in rows if r["probe"] == probe] for probe in PROBES}
    accuracy = {probe: float(np.mean([r["accuracy"] for r in rows if r["probe"] == probe])) for probe in PROBES}
    uniform = rows[0]["uniform_bits"]
    (mean_s, sem_s), (mean_t, sem_t) = mean_and_sem(mdl["s"]), mean_and_sem(mdl["t"])
    ratio, ratio_sem = relative_extractability(mdl["s"], mdl["t"])
    return {**base, "layer": layer, "mdl_s_bits": mean_s, "mdl_s_sem": sem_s, "mdl_t_bits": mean_t, "mdl_t_sem": sem_t,
            "relative_extractability": ratio, "relative_extractability_sem": ratio_sem,
            "compression_s": uniform / mean_s, "compression_t": uniform / mean_t,
            "accuracy_s": accuracy["s"], "accuracy_t": accuracy["t"], "uniform_bits": uniform,
            "n_seeds": len(mdl["s"]), **_censoring(accuracy, min_accuracy)}


def _best_layer_row(base: dict, per_layer: list[dict], min_accuracy: float) -> dict:
    """layer = -1: each feature at its most extractable layer (lowest mean MDL); censored when
    a probe's accuracy at its chosen layer is below `min_accuracy`."""
    best = {probe: min(per_layer, key=lambda row: row[f"mdl_{probe}_bits"]) for probe in PROBES}
    row = {**base, "layer": -1, "uniform_bits": per_layer[0]["uniform_bits"], "n_seeds": per_layer[0]["n_seeds"]}
    for probe in PROBES:
        for column in (f"mdl_{probe}_bits", f"mdl_{probe}_sem", f"compression_{probe}", f"accuracy_{probe}"):
            row[column] = best[probe][column]
    ratio = row["mdl_s_bits"] / row["mdl_t_bits"]
    row["relative_extractability"] = ratio
    row["relative_extractability_sem"] = ratio * math.sqrt(
        (row["mdl_s_sem"] / row["mdl_s_bits"]) ** 2 + (row["mdl_t_sem"] / row["mdl_t_bits"]) ** 2
    )
    row.update(_censoring({probe: row[f"accuracy_{probe}"] for probe in PROBES}, min_accuracy))
    return {column: row[column] for column in EXTRACTABILITY_COLUMNS}


# EVERY TASK


def measure(code: OnlineCode, mode: str, seeds: int, tasks, *, min_accuracy: float,
            progress: Callable[[str], None] = print) -> ExtractabilityResult:
    """MDL of the s- and t-probes and their ratio for every task.

    tasks: (task_id, build) pairs, build() -> ProbeTask; a task's wall time includes
    building its sets. Both probes × all seeds (× all layers) run as one program per task;
    a row whose probes' held-out accuracy is below `min_accuracy` is marked censored.
    """
    result = ExtractabilityResult(min_accuracy)
    for _, build in tasks:
        started = time.perf_counter()
        task = build()
        if task.features_fn is not None:
            inputs, labels, infos, lanes = frozen_lanes(task.keys, task.tokens, task.labels, seeds, task.features_fn)
        else:
            inputs, labels, infos, lanes = model_lanes(task.keys, task.tokens, task.labels, seeds)
        output = jax.block_until_ready(code(inputs, labels, lanes))
        progress(result.add_task(task.task_id, task.task_name, mode, infos, code, output, started))
    return result
