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
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping

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


BARRIER_TIMEOUT_S = 3600  # another process may still be compiling its programs
_exchanges = 0


def _coordination_client():
    """The client of `jax.distributed.initialize`, or None when joined by other means (e.g. a TPU runtime)."""
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def _next_key(name: str) -> str:
    global _exchanges
    _exchanges += 1  # every process passes the same exchanges in the same order
    return f"rlbias:{_exchanges}:{name}"


def barrier(name: str) -> None:
    """Wait until every process reaches this point (nothing to do for one process).

    Through the coordination service, with a long timeout: a device collective would set
    up gloo's TCP pairs, whose connect timeout (about 30 s) a process still compiling
    can exceed on a loaded machine."""
    if jax.process_count() == 1:
        return
    client = _coordination_client()
    if client is None:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(_next_key(name), BARRIER_TIMEOUT_S * 1000)


def broadcast_flag(value: bool) -> bool:
    """Process 0's value of a host-side decision, on every process (e.g. 'a checkpoint is due').

    A key-value exchange through the coordination service, not a device collective: the
    collective's first use compiles, and its gloo connect timeout (about 30 s) can expire
    while the other process is still compiling."""
    if jax.process_count() == 1:
        return value
    client = _coordination_client()
    if client is None:
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))
    key = _next_key("flag")
    if jax.process_index() == 0:
        client.key_value_set(key, "1" if value else "0")
    return client.blocking_key_value_get(key, BARRIER_TIMEOUT_S * 1000) == "1"


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _local_pieces(x) -> list:
    """(index, host data) of the shards of `x` this process holds, one replica each."""
    return [(shard.index, np.asarray(shard.data)) for shard in x.addressable_shards if shard.replica_id == 0]


def _gather_through_coordinator(arrays: list, client) -> list[np.ndarray]:
    """Whole host copies of arrays sharded across processes, exchanged as bytes through the
    coordination service (no device collective, see `broadcast_flag`)."""
    key = _next_key("gather")
    client.key_value_set_bytes(f"{key}:{jax.process_index()}", pickle.dumps([_local_pieces(x) for x in arrays]))
    wholes = [np.empty(x.shape, x.dtype) for x in arrays]
    for process in range(jax.process_count()):
        pieces = pickle.loads(client.blocking_key_value_get_bytes(f"{key}:{process}", BARRIER_TIMEOUT_S * 1000))
        for whole, array_pieces in zip(wholes, pieces):
            for index, data in array_pieces:
                whole[index] = data
    barrier("gathered")  # every process has read every piece: each may drop its own
    client.key_value_delete(f"{key}:{jax.process_index()}")
    return wholes


def to_host(tree):
    """Every leaf as a whole host array, gathered from all processes when it is sharded across them.

    Typed PRNG keys come back as key arrays on the default local device."""
    leaves, treedef = jax.tree.flatten(tree)
    key_impls = [jax.random.key_impl(x) if _is_key(x) else None for x in leaves]
    data = [jax.random.key_data(x) if impl is not None else x for x, impl in zip(leaves, key_impls)]
    sharded = [i for i, x in enumerate(data) if isinstance(x, jax.Array) and not x.is_fully_addressable]
    host = [np.asarray(x) if i not in sharded else None for i, x in enumerate(data)]
    if sharded:
        client = _coordination_client()
        if client is None:
            from jax.experimental import multihost_utils

            gathered = [np.asarray(multihost_utils.process_allgather(data[i], tiled=True)) for i in sharded]
        else:
            gathered = _gather_through_coordinator([data[i] for i in sharded], client)
        for i, whole in zip(sharded, gathered):
            host[i] = whole
    out = [jax.random.wrap_key_data(h, impl=impl) if impl is not None else h for h, impl in zip(host, key_impls)]
    return jax.tree.unflatten(treedef, out)


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


class ShardwiseProgram:
    """A jitted function of run-sharded arrays, run as one single-device program per local device.

    XLA compiles a program for several devices (SPMD jit, shard_map and pmap alike) through
    other simplification passes than a program for one device, which changes the last bits
    of a few results (e.g. `x / s` against `x * (1 / s)` in the softmax gradient). Running
    the single-device program on each device's share of the runs keeps the arithmetic, and
    so the results, independent of the number of devices and processes; the runs need no
    communication. Arguments and results carry the run axis first (arguments may also be
    replicated); the local devices' programs are compiled in parallel threads.
    """

    def __init__(self, jitted: Callable):
        self.jitted = jitted
        self._compiled: dict = {}

    def __call__(self, *args, **static):
        mesh = _runs_mesh(args)
        if mesh is None:  # everything on one device: the plain jitted function
            return self.jitted(*args, **static)
        devices = [device for device in mesh.devices.flat if device.process_index == jax.process_index()]
        shares = [jax.tree.map(lambda x: _share(x, device), args) for device in devices]
        programs = self._programs(devices, shares, static)
        outputs = [program(*share) for program, share in zip(programs, shares)]  # dispatched asynchronously
        sharding = NamedSharding(mesh, PartitionSpec("runs"))
        return jax.tree.map(lambda *parts: _assemble(parts, sharding, mesh.size), *outputs)

    def _programs(self, devices, shares, static) -> list:
        signature = jax.tree.map(lambda x: (x.shape, str(x.dtype)), shares[0])
        key = (tuple(device.id for device in devices), tuple(sorted(static.items())), jax.tree.structure(shares[0]),
               tuple(jax.tree.leaves(signature)))
        if key not in self._compiled:
            lowered = [self.jitted.lower(*share, **static) for share in shares]  # tracing holds the GIL: one at a time
            with ThreadPoolExecutor(max_workers=len(lowered)) as pool:
                self._compiled[key] = list(pool.map(lambda program: program.compile(), lowered))
        return self._compiled[key]


def _runs_mesh(args) -> Mesh | None:
    """The mesh of the first argument sharded over more than one device, if any."""
    for leaf in jax.tree.leaves(args):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


def _share(x, device):
    """The part of `x` on `device` (all of it when replicated), as a single-device array."""
    if isinstance(x, jax.Array):
        for shard in x.addressable_shards:
            if shard.device == device:
                return shard.data
    return jax.device_put(x, device)


def _assemble(parts, sharding: NamedSharding, num_devices: int):
    shape = (parts[0].shape[0] * num_devices, *parts[0].shape[1:])
    return jax.make_array_from_single_device_arrays(shape, sharding, list(parts))
