"""What a trained run does, from its four partition scores (SPEC §8).

With threshold τ (`eval.behaviour_threshold`), a score is *high* when ≥ τ and *low*
when ≤ 1 − τ. Classes, decided in this order (the first that matches wins):

1. `constant`: answers one ordering whatever the prompt — the two label-1 partitions
   (both, t_only) low and the two label-0 partitions (neither, s_only) high, or the
   reverse. It comes first because a constant policy also has both or neither low,
   i.e. it is also "not learned"; naming it keeps PPO's constant trap visible.
2. `not_learned`: both or neither below τ (the run does not solve the training task).
3. `target`: all four partitions high (uses t).
4. `spurious`: both and neither high, s_only and t_only low (uses s).
5. `mixed`: anything else (both and neither high, s_only/t_only in between: e.g. an
   s-and-t or s-or-t rule, or partial generalisation).

Only 1 and 2 overlap (constant ⊂ not_learned), so the order matters only there.

Feature use: `use_target = (s_only + t_only) / 2` (SPEC §2) and
`use_spurious = ((1 − s_only) + (1 − t_only)) / 2 = 1 − use_target`: the mean error
on the two partitions where s and t disagree. A constant policy scores 0.5 on both,
so neither number means anything alone: the statistics read them only from runs
that learned the task (`LEARNED`: target, spurious, mixed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BEHAVIOURS = ("target", "spurious", "mixed", "constant", "not_learned")
LEARNED = ("target", "spurious", "mixed")  # runs whose use_target is evidence of feature use
FAILED = "failed"  # numerical fault: no scores
_ROUNDING = 1e-9  # 1 − 0.8 is 0.19999999999999996 in floating point; a score of 0.2 is low


def classify(both: float, neither: float, s_only: float, t_only: float, threshold: float) -> str:
    """The behaviour class of one run (module docstring); `failed` when a score is not finite."""
    scores = np.array([both, neither, s_only, t_only], dtype=np.float64)
    if not np.isfinite(scores).all():
        return FAILED
    high = scores >= threshold - _ROUNDING
    low = scores <= 1.0 - threshold + _ROUNDING
    both_high, neither_high, s_only_high, t_only_high = high
    both_low, neither_low, s_only_low, t_only_low = low
    if (both_low and t_only_low and neither_high and s_only_high) or (both_high and t_only_high and neither_low and s_only_low):
        return "constant"
    if not (both_high and neither_high):
        return "not_learned"
    if s_only_high and t_only_high:
        return "target"
    if s_only_low and t_only_low:
        return "spurious"
    return "mixed"


def classify_runs(scores: pd.DataFrame, threshold: float | pd.Series) -> pd.Series:
    """`classify` for every row of a `scores_by_run` table (columns both, neither, s_only, t_only).

    `threshold` is one τ or one per row (pooled runs keep their own configs).
    """
    thresholds = threshold if isinstance(threshold, pd.Series) else pd.Series(threshold, index=scores.index)
    labels = [
        classify(row.both, row.neither, row.s_only, row.t_only, tau)
        for row, tau in zip(scores[["both", "neither", "s_only", "t_only"]].itertuples(index=False), thresholds)
    ]
    return pd.Series(labels, index=scores.index, name="behaviour", dtype=object)


def use_spurious(s_only: np.ndarray | float, t_only: np.ndarray | float):
    """((1 − s_only) + (1 − t_only)) / 2: how much the run follows s where s and t disagree."""
    return ((1.0 - np.asarray(s_only)) + (1.0 - np.asarray(t_only))) / 2


def counts(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Number of runs of each behaviour (columns BEHAVIOURS + failed) per `keys`."""
    columns = list(BEHAVIOURS) + [FAILED]
    counted = table.groupby(keys + ["behaviour"]).size().unstack("behaviour", fill_value=0)
    return counted.reindex(columns=columns, fill_value=0).reset_index()
