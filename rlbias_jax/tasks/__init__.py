"""Tasks: the toy features and tasks of SPEC §3 and §8 (`features`, `toy`, `catalogue`); NL prefix tasks (`nl`)."""

from rlbias_jax.tasks import toy
from rlbias_jax.tasks.features import FEATURES, Feature, get_feature, register_feature
from rlbias_jax.tasks.toy import (
    ORIGINAL_TASKS,
    PARTITION_FEATURES,
    PARTITIONS,
    SPURIOUS_SYMBOL,
    TASK_NAMES,
    ToyTask,
    TrainingSet,
    has_features,
    has_spurious,
    has_target,
    make_test_sets,
    make_training_set,
    sample_examples,
    sample_partition,
    task_from_pair,
)

__all__ = [
    "FEATURES",
    "Feature",
    "ORIGINAL_TASKS",
    "PARTITION_FEATURES",
    "PARTITIONS",
    "SPURIOUS_SYMBOL",
    "TASK_NAMES",
    "ToyTask",
    "TrainingSet",
    "get_feature",
    "has_features",
    "has_spurious",
    "has_target",
    "make_test_sets",
    "make_training_set",
    "register_feature",
    "sample_examples",
    "sample_partition",
    "task_from_pair",
    "toy",
]
