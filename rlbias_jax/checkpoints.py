"""Orbax checkpoints of a sweep's state between chunks (keep the last K).

The state pytree (parameters, optimiser state, PRNG keys, KL coefficients,
iteration counters, fault flags) is saved as-is, with typed PRNG keys stored as
their raw key data. Restoring tries the newest checkpoint first and falls back
to older ones if a checkpoint is truncated or corrupt.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No usable checkpoint."""


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def data_to_keys(tree, like):
    return jax.tree.map(lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x, tree, like)


class SweepCheckpoints:
    """A directory of step-numbered checkpoints of one sweep's state."""

    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(keys_to_data(state)), force=True)
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def restore_latest(self, like, on_skip: Callable[[str], None] = print) -> tuple[int, object]:
        """(step, state) from the newest readable checkpoint; `like` is a state of the same structure."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), keys_to_data(like)
        )
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        for step in reversed(steps):
            try:
                restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
                return step, data_to_keys(restored, like)
            except Exception as error:  # a truncated or corrupt checkpoint: fall back to the previous one
                logging.getLogger(__name__).warning("checkpoint %s unreadable: %s", step, error)
                on_skip(f"checkpoint at iteration {step} is unreadable ({type(error).__name__}: {str(error)[:200]}); trying an older one")
        raise CheckpointError(f"every checkpoint in {self.directory} is unreadable ({steps})")

    def close(self) -> None:
        self.manager.close()
