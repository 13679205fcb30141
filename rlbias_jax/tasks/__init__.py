"""Tasks: the toy tasks of SPEC §3 (`rlbias_jax.tasks.toy`)."""

from rlbias_jax.tasks import toy
from rlbias_jax.tasks.toy import (
    PARTITION_FEATURES,
    PARTITIONS,
    SPURIOUS_SYMBOL,
    TASK_NAMES,
    TrainingSet,
    has_spurious,
    has_target,
    make_test_sets,
    make_training_set,
    sample_examples,
    sample_partition,
)

__all__ = [
    "PARTITION_FEATURES",
    "PARTITIONS",
    "SPURIOUS_SYMBOL",
    "TASK_NAMES",
    "TrainingSet",
    "has_spurious",
    "has_target",
    "make_test_sets",
    "make_training_set",
    "sample_examples",
    "sample_partition",
    "toy",
]
