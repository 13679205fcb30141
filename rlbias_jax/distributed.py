"""Multi-device and multi-host plumbing: joining the process group, placing and gathering runs.

One process per host (or per accelerator) runs the same program. `initialize`
joins them through `jax.distributed.initialize` before any device is touched;
the sweep's run axis is then sharded over every device of every process, and
only process 0 writes files (docs/scale_out.md).

Single-process runs never call `jax.distributed` and take the plain paths below.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlbias_jax.config import ConfigError, RunConfig

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

_ADDRESS = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    coordinator_address: str | None
    num_processes: int
    process_id: int

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be an integer (got {raw!r})") from None


def resolve_process_group(run: RunConfig, environ: Mapping[str, str] = os.environ) -> ProcessGroup:
    """The process group from `[run]` (set fields win) or the environment; one process by default."""
    address = run.coordinator_address or environ.get(ENV_COORDINATOR, "").strip() or None
    address_field = "run.coordinator_address" if run.coordinator_address else ENV_COORDINATOR
    num_processes = run.num_processes or _env_int(environ, ENV_NUM_PROCESSES) or 1
    count_field = "run.num_processes" if run.num_processes else ENV_NUM_PROCESSES
    process_id = run.process_id if run.process_id >= 0 else _env_int(environ, ENV_PROCESS_ID)
    id_field = "run.process_id" if run.process_id >= 0 else ENV_PROCESS_ID
    if num_processes < 1:
        raise ConfigError(f"{count_field}: must be >= 1 (got {num_processes})")
    if num_processes == 1:
        return ProcessGroup(address, 1, 0)
    if address is None:
        raise ConfigError(f"{count_field}: {num_processes} processes need a coordinator address "
                          f"(run.coordinator_address or {ENV_COORDINATOR}, e.g. \"10.0.0.1:1234\")")
    if not _ADDRESS.match(address):
        raise ConfigError(f"{address_field}: must look like host:port (got {address!r})")
    if process_id is None:
        raise ConfigError(f"{id_field}: each of the {num_processes} processes needs its id (run.process_id or {ENV_PROCESS_ID})")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"{id_field}: must be in [0, {num_processes}) (got {process_id})")
    return ProcessGroup(address, num_processes, process_id)


def initialize(run: RunConfig, environ: Mapping[str, str] = os.environ) -> ProcessGroup:
    """Join the process group (a no-op for one process). Call before any device is used."""
    group = resolve_process_group(run, environ)
    if group.multi_process and not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=group.coordinator_address,
            num_processes=group.num_processes,
            process_id=group.process_id,
        )
    return group


def is_writer() -> bool:
    """Only process 0 writes run-directory files (checkpoints are written collectively by orbax)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (nothing to do for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_flag(value: bool) -> bool:
    """Process 0's value of a host-side decision, on every process (e.g. 'a checkpoint is due')."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_host(tree):
    """Every leaf as a whole host array, gathered from all processes when it is sharded across them.

    Typed PRNG keys come back as key arrays on the default local device."""

    def one(x):
        if _is_key(x):
            data = one(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def place_runs(tree, mesh: Mesh):
    """Shard every leaf's leading (run) axis over the mesh; every process must pass the same values."""
    sharding = NamedSharding(mesh, PartitionSpec("runs"))
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if _is_key(x):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)
