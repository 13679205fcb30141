"""Extractability by MDL probing (SPEC §5): the online code, probe modes, relative extractability."""

from rlbias_jax.probing.blocks import BLOCK_FRACTIONS, NUM_BLOCKS, balanced_order, block_ends
from rlbias_jax.probing.codelength import OnlineCodelength, online_codelength, uniform_codelength
from rlbias_jax.probing.extractability import (
    ExtractabilityResult,
    ProbeTask,
    measure,
    relative_extractability,
)
from rlbias_jax.probing.online_code import Lanes, OnlineCode, Schedule, online_code_block_by_block
from rlbias_jax.probing.probes import ProbeModel, finetune_probe, frozen_probe, layer_features, policy_probe, pretrained_probe

__all__ = [
    "BLOCK_FRACTIONS", "NUM_BLOCKS", "ExtractabilityResult", "Lanes", "OnlineCode", "OnlineCodelength", "ProbeModel",
    "Schedule", "balanced_order", "block_ends", "finetune_probe", "frozen_probe", "layer_features",
    "ProbeTask", "measure", "online_code_block_by_block", "online_codelength", "policy_probe", "pretrained_probe",
    "relative_extractability", "uniform_codelength",
]
