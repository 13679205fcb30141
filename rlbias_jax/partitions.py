"""The four test partitions of SPEC §2, shared by every experiment, task family and table.

| partition | s | t | label |
|---|---|---|---|
| both | yes | yes | 1 |
| neither | no | no | 0 |
| s_only | yes | no | 0 |
| t_only | no | yes | 1 |

Defined once, at the bottom of the import graph, so that tasks/, probing/, analysis/
and experiments/ read the same names (experiments.base re-exports them).
"""

PARTITIONS = ("both", "neither", "s_only", "t_only")
# (s, t) of each partition.
PARTITION_FEATURES = {"both": (True, True), "neither": (False, False), "s_only": (True, False), "t_only": (False, True)}
# The label (what the reward asks for) is t.
PARTITION_LABELS = {name: int(target) for name, (_, target) in PARTITION_FEATURES.items()}
