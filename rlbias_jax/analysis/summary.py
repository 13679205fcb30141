"""The end-of-run summary printed by `rlbias run`: use_target per task × rate and the mean
score per partition, before → after training (sampled decoding)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlbias_jax.analysis.tables import PARTITIONS, scores_by_run


def use_target_table(rows: list[dict], decoding: str = "sample") -> dict[tuple[int, float], list[float]]:
    """{(task_id, rate): [use_target per seed, in seed order]} from result rows (`scores_by_run`'s use_target)."""
    if not rows:
        return {}
    scores = scores_by_run(pd.DataFrame(rows))
    scores = scores[scores["decoding"] == decoding]
    table: dict[tuple[int, float], list[float]] = {}
    for task_id, rate, use_target in zip(scores["task_id"], scores["s_only_rate"], scores["use_target"]):
        table.setdefault((int(task_id), float(rate)), []).append(float(use_target))
    return table


def mean_scores(rows: list[dict]) -> dict[tuple[int, str], float]:
    """{(task_id, partition): mean score} over rates and seeds (sampled decoding)."""
    cells: dict[tuple[int, str], list[float]] = {}
    for row in rows:
        if row["decoding"] == "sample":
            cells.setdefault((int(row["task_id"]), row["partition"]), []).append(float(row["score"]))
    return {key: float(np.mean(values)) for key, values in cells.items()}


def summary_lines(results: list[dict], baseline: list[dict] | None = None) -> list[str]:
    """use_target per task × rate (mean over seeds; sampled decoding) as printable lines."""
    table = use_target_table(results)
    rates = sorted({rate for _, rate in table})
    tasks = sorted({task for task, _ in table})
    names = {int(row["task_id"]): row["task_name"] for row in results}
    id_width = max([3] + [len(str(task)) for task in tasks])  # feature-pair ids have 6 digits
    lines = ["use_target = (score(s_only) + score(t_only)) / 2, mean over seeds (sampled decoding)",
             f"{'task':<{id_width + 26}}" + "".join(f"p={rate:<8g}" for rate in rates)]
    for task in tasks:
        cells = "".join(f"{np.mean(table[(task, rate)]):<10.3f}" for rate in rates)
        lines.append(f"{task:<{id_width}} {names[task][:24]:<25}{cells}")
    means = mean_scores(results)
    lines.append("mean score per partition (all rates and seeds): " + "; ".join(
        f"task {task} " + " ".join(f"{part}={means[(task, part)]:.2f}" for part in PARTITIONS)
        for task in tasks
    ))
    if baseline:
        lines += baseline_lines(baseline, results)
    return lines


def baseline_lines(baseline: list[dict], results: list[dict]) -> list[str]:
    """Mean score per task and partition before -> after training (sampled decoding)."""
    before, after = mean_scores(baseline), mean_scores(results)
    lines = ["score before -> after training (mean over rates and seeds, sampled decoding)",
             f"{'task':<7}" + "".join(f"{part:<16}" for part in PARTITIONS)]
    for task in sorted({task for task, _ in after}):
        cells = "".join(
            f"{before.get((task, part), float('nan')):.2f} -> {after[(task, part)]:.2f}    " if (task, part) in after else f"{'':16}"
            for part in PARTITIONS
        )
        lines.append(f"{task:<6} {cells}")
    return lines
