"""Orbax checkpoints of a sweep's state between chunks: keep the last K, step- or time-based.

A checkpoint holds the whole state pytree — parameters, optimiser state, PRNG keys
(which are also the data position: prompts are drawn with them from the fixed
training set), KL coefficients, iteration counters and fault flags — with typed
keys stored as raw key data, plus a small JSON record (the step and the number of
real, unpadded runs). Once orbax has committed it, `rlbias_files.json` in the step
folder lists the size and SHA-256 of every file.

Orbax writes a checkpoint into a temporary folder and renames it when complete,
so a kill during a save leaves no half checkpoint under a step number. Restoring
checks the newest checkpoint's files against their list (before orbax reads them:
tensorstore reports a truncated file noisily), reads it into host memory, and
falls back to older checkpoints when one is truncated or corrupt (moving it aside
to `checkpoints.corrupt/`). The real runs are then re-padded and placed like the
current state, so a sweep can resume on a different number of devices.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rlbias_jax import distributed
from rlbias_jax.runs import atomic_write_json

FORMAT = 2  # of the JSON record; checkpoints without it (or older) are not read
FILE_LIST = "rlbias_files.json"


class CheckpointError(RuntimeError):
    """No usable checkpoint (a user-facing, one-line message)."""


class CorruptCheckpoint(CheckpointError):
    """One checkpoint is unreadable or fails its digest check."""


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def data_to_keys(tree, like):
    return jax.tree.map(lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x, tree, like)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_files(step_dir: Path) -> dict[str, list]:
    """{relative path: [size, sha256]} of every file of a checkpoint (but the list itself)."""
    return {
        str(path.relative_to(step_dir)): [path.stat().st_size, _sha256(path)]
        for path in sorted(step_dir.rglob("*"))
        if path.is_file() and path.name != FILE_LIST
    }


def check_files(step_dir: Path) -> None:
    """CorruptCheckpoint unless every listed file is there with its size and digest (no list: nothing to check)."""
    listing = step_dir / FILE_LIST
    if not listing.is_file():
        return
    try:
        expected = json.loads(listing.read_text())
    except (OSError, ValueError) as error:
        raise CorruptCheckpoint(f"{FILE_LIST} is unreadable: {error}") from None
    for name, (size, digest) in expected.items():
        path = step_dir / name
        if not path.is_file():
            raise CorruptCheckpoint(f"{name} is missing")
        if path.stat().st_size != size:
            raise CorruptCheckpoint(f"{name} has {path.stat().st_size} bytes, {size} were written")
        if _sha256(path) != digest:
            raise CorruptCheckpoint(f"{name} has changed since it was written")


def _pad_host(x: np.ndarray, num_runs: int, padded: int) -> np.ndarray:
    """The first `num_runs` runs, then the last of them repeated up to `padded` (as sweep.pad_runs)."""
    x = x[: min(num_runs, padded)]  # num_runs may count padding when the caller did not say
    num_runs = x.shape[0]
    if padded == num_runs:
        return x
    return np.concatenate([x, np.repeat(x[-1:], padded - num_runs, axis=0)])


def _place_like(host: np.ndarray, ref):
    """A device array with the shape, dtype and sharding of `ref`, from the host array every process holds."""
    sharding = getattr(ref, "sharding", None)
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class SweepCheckpoints:
    """A directory of step-numbered checkpoints of one sweep's state.

    `save` always writes; `maybe_save` writes after every chunk when `every_s` is 0, else
    only when `every_s` seconds have passed since the last checkpoint, and always at the
    final step."""

    def __init__(self, directory: Path, keep: int, every_s: float = 0.0):
        self.directory = Path(directory).resolve()
        self.keep = keep
        self.every_s = every_s
        self.last_save = time.monotonic()
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "record": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
            ),
        )

    # SAVING

    def save(self, step: int, state, *, num_runs: int | None = None) -> None:
        data = keys_to_data(state)
        leading = jax.tree.leaves(data)[0].shape[0]
        record = {
            "format": FORMAT,
            "step": int(step),
            "num_runs": int(num_runs if num_runs is not None else leading),
            "saved_runs": int(leading),
        }
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(data), record=ocp.args.JsonSave(record)), force=True)
        self.manager.wait_until_finished()
        if distributed.is_writer():
            step_dir = self.directory / str(step)
            atomic_write_json(step_dir / FILE_LIST, list_files(step_dir))
        distributed.barrier("rlbias:checkpoint-listed")
        self.last_save = time.monotonic()

    def due(self, final: bool) -> bool:
        """Whether `maybe_save` would write now (process 0 decides for every process)."""
        due = final or self.every_s <= 0 or time.monotonic() - self.last_save >= self.every_s
        return distributed.broadcast_flag(due)

    def maybe_save(self, step: int, state, *, final: bool, num_runs: int | None = None) -> bool:
        if not self.due(final):
            return False
        self.save(step, state, num_runs=num_runs)
        return True

    # RESTORING

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def _restore_step(self, step: int, like):
        """The state at `step` placed like `like`, after the file check; CorruptCheckpoint otherwise."""
        check_files(self.directory / str(step))
        try:
            record = self.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise CorruptCheckpoint(f"its record is missing or of another format ({str(record)[:80]})")
            like_data = keys_to_data(like)
            saved = record["saved_runs"]
            target = jax.tree.map(lambda x: np.zeros((saved, *x.shape[1:]), x.dtype), like_data)
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        except CorruptCheckpoint:
            raise
        except Exception as error:  # orbax/tensorstore report truncated or missing files in many ways
            raise CorruptCheckpoint(f"{type(error).__name__}: {_first_line(error)}") from None
        host = jax.tree.map(np.asarray, restored)
        if jax.tree.structure(host) != jax.tree.structure(like_data):
            raise CorruptCheckpoint("its state has a different structure")
        padded = jax.tree.leaves(like_data)[0].shape[0]
        placed = jax.tree.map(lambda x, ref: _place_like(_pad_host(x, record["num_runs"], padded), ref), host, like_data)
        return data_to_keys(placed, like)

    def restore_latest(self, like, on_skip: Callable[[str], None] = print) -> tuple[int, object]:
        """(step, state) from the newest good checkpoint; `like` is a state of the same structure
        (the same runs; any padding and sharding). Corrupt newer checkpoints are moved aside."""
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        bad: list[int] = []
        for step in reversed(steps):
            try:
                state = self._restore_step(step, like)
            except CorruptCheckpoint as error:
                bad.append(step)
                on_skip(f"checkpoint at iteration {step} is unusable ({error}); trying an older one")
                continue
            self._quarantine(bad, on_skip)
            self._prune(keep_also=step)
            return step, state
        raise CheckpointError(
            f"no usable checkpoint in {self.directory}: iterations {steps} are all unreadable or corrupt; "
            "move that folder away to restart the sweep from iteration 0"
        )

    def _quarantine(self, steps: list[int], on_skip: Callable[[str], None]) -> None:
        """Move corrupt checkpoints out of orbax's way (the sweep will write those steps again)."""
        if not steps:
            return
        aside = self.directory.parent / f"{self.directory.name}.corrupt"
        if distributed.is_writer():
            for step in steps:
                target = aside / f"{step}.{int(time.time())}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(self.directory / str(step)), str(target))
                on_skip(f"moved the unusable checkpoint {step} to {target}")
        distributed.barrier("rlbias:checkpoints-quarantined")
        self.manager.reload()

    def _prune(self, keep_also: int) -> None:
        """Delete all but the newest `keep` checkpoints (a kill between a save and orbax's own
        clean-up leaves one too many)."""
        steps = self.steps()
        for step in steps[: max(len(steps) - self.keep, 0)]:
            if step != keep_also:
                self.manager.delete(step)

    def close(self) -> None:
        self.manager.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:200]
