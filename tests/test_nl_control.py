"""The NL positive control learns (issue 13 item 1): a reduced configs/nl_control.toml, with every
prompt rewarded for positive sentiment, raises the held-out score of the partitions.

Real model (the bundled SmolLM2-135M), real corpus and reward, fixed seed; a few minutes on 2 CPU
cores. The threshold sits well below the rises measured over several seeds (docs/nl.md, "The
positive control"), so the test fails only when learning breaks (checked: at learning rate 1e-12
the run fails it).
"""

import csv

import pytest

from rlbias_jax.config import load_config
from rlbias_jax.experiments.runner import run_experiment

pytestmark = pytest.mark.slow

# Reduced control: 16 iterations x 24 episodes (nl_control: 40), 32 test prompts per partition.
REDUCED = {"ppo.iterations": 16, "run.chunk_iterations": 8, "run.report": False,
           **{f"task.test_size_{p}": 32 for p in ("both", "neither", "s_only", "t_only")}}
# Mean over the four partitions of (after - before), measured at REDUCED as one 3-seed sweep
# (sweep.seeds = 3, bf16): 0.053, 0.039, 0.053 (every partition rose in every seed; docs/nl.md).
# The threshold is half the smallest. Before and after use the same prompts and sampling keys,
# so an untrained policy scores a rise of exactly 0, not noise around it.
MIN_MEAN_RISE = 0.02


def _scores(path) -> dict[str, float]:
    with open(path) as file:
        return {row["partition"]: float(row["score"]) for row in csv.DictReader(file) if row["decoding"] == "sample"}


def control_rise(tmp_path, seed: int = 0, **overrides) -> dict[str, float]:
    """Per-partition held-out score after - before of one reduced control run."""
    config = load_config("configs/nl_control.toml", {**REDUCED, "run.seed": seed, **overrides})
    outcome = run_experiment(config, overwrite=True, out_dir=str(tmp_path), probe=False, report=False,
                             progress=lambda line: None)
    before, after = _scores(outcome.run_dir / "baseline.csv"), _scores(outcome.run_dir / "results.csv")
    return {partition: after[partition] - before[partition] for partition in before}


def test_positive_control_raises_the_held_out_scores(tmp_path):
    rise = control_rise(tmp_path)
    mean_rise = sum(rise.values()) / len(rise)
    assert mean_rise >= MIN_MEAN_RISE, f"the positive control did not learn: rise per partition {rise}"
