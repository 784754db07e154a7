"""The device mesh and the one table that maps logical axis names onto it.

Models name logical axes only (``vocab``, ``embed``, ``heads``, ...); this file alone decides how
they land on the mesh axes ``data``, ``fsdp`` and ``tensor``. Batches are split over
``data`` × ``fsdp`` (FSDP shards parameters *and* the batch).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autogpt_jax.config import ConfigError, MeshConfig

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (None: replicated). The single source of sharding truth.
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", BATCH_AXES),
    ("layers", None),  # the stacked axis of scanned layers (models/scan.py): every device holds every layer
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("position", None),
    ("norm", None),
)


def init_distributed(cfg: MeshConfig) -> None:
    """Start jax.distributed when several processes are configured (flags or environment)."""
    addr = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    nproc = cfg.num_processes or (int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ else None)
    pid = cfg.process_id if cfg.process_id is not None else (
        int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
    if not addr or not nproc or nproc == 1:
        return
    if pid is None:
        raise ConfigError("mesh.num_processes > 1 needs mesh.process_id (or JAX_PROCESS_ID)")
    if jax.distributed.is_initialized():
        return
    if _cpu_only():  # CPU collectives across processes need gloo
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid)
    log.info("jax.distributed: process %d of %d via %s", pid, nproc, addr)


def _cpu_only() -> bool:
    # Decided without touching jax.devices(), which would start the backends before jax.distributed.
    plats = os.environ.get("JAX_PLATFORMS", "")
    if plats:
        return plats.split(",")[0] == "cpu"
    try:
        import jax_cuda12_plugin  # noqa: F401
        return False
    except ImportError:
        return True


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n % known:
            raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: {n} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, but {n} are "
                          f"available; set one of --mesh.data/--mesh.fsdp/--mesh.tensor to -1")
    arr = np.asarray(devices).reshape(sizes)
    return Mesh(arr, MESH_AXES)


def flat_mesh(axis: str, devices: list | None = None) -> Mesh:
    """A one-axis mesh named ``axis`` over ``devices`` (default: all of them), for arrays split by
    rows outside the model's data/fsdp/tensor layout (e.g. a retrieval index)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (axis,))


def logical_to_spec(axes: tuple[str | None, ...] | None, shape: tuple[int, ...], mesh: Mesh) -> P:
    """PartitionSpec for one array. A dimension that the mesh axis does not divide stays replicated,
    and no mesh axis is used twice in one array."""
    if not axes:
        return P()
    rules = dict(LOGICAL_RULES)
    used: set[str] = set()
    out = []
    for name, dim in zip(axes, shape):
        target = rules.get(name) if name is not None else None
        if name is not None and name not in rules:
            raise ValueError(f"logical axis {name!r} has no rule in LOGICAL_RULES")
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape[a] > 1)
        size = int(np.prod([mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
        if not mesh_axes or dim % size:
            out.append(None)
            continue
        used.update(mesh_axes)
        out.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return P(*out)


def variable_sharding(var: Any, mesh: Mesh) -> NamedSharding:
    """Sharding of an NNX variable from its ``out_sharding`` logical axes."""
    value = var.get_value()
    axes = var.get_metadata().get("out_sharding")
    return NamedSharding(mesh, logical_to_spec(axes, tuple(value.shape), mesh))


def state_shardings(state, mesh: Mesh):
    """A pytree of NamedShardings matching an (abstract) NNX state."""
    from flax import nnx

    return jax.tree.map(lambda var: variable_sharding(var, mesh), state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place a global host batch (identical on every process) onto the mesh, split on the batch axes.
    Each process materialises only its addressable shards."""
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.shape[0] % batch_divisor(mesh):
            raise ConfigError(f"batch size {v.shape[0]} is not divisible by the data×fsdp mesh size {batch_divisor(mesh)}")
        out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
    return out


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def put_rows(arrays: dict[str, np.ndarray], mesh: Mesh, rows: int) -> dict[str, jax.Array]:
    """An inference batch on the mesh: the arrays with ``rows`` leading rows split over the batch
    axes (each device computes its share), the rest (per-batch tables) replicated."""
    split, rest = batch_sharding(mesh), replicated(mesh)
    return {k: jax.make_array_from_callback(np.shape(v), split if np.shape(v)[:1] == (rows,) else rest,
                                            lambda idx, v=np.asarray(v): v[idx]) for k, v in arrays.items()}


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) array as one host array on every process, in global order."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
