"""Device mesh, logical-axis rules, and the `NamedSharding`s for state and batch.

Model code names tensor axes logically ("embed", "mlp", "q_heads", ...). The rules below (kept
in config, `config.mesh.rules`) map each logical name to mesh axes. A dimension that its mesh
axes do not divide is replicated instead of erroring, so one rule set serves every model size
(e.g. SmolLM2's 3 KV heads on a 2-way tensor axis).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rho_jax import model

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the global batch is split over both data-parallel axes

# logical axis -> mesh axis (or tuple of axes, or None for replicated)
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


class MeshError(ValueError):
    pass


def mesh_shape(data: int, fsdp: int, tensor: int, n_devices: int) -> tuple[int, int, int]:
    """Resolves one -1 axis to fill the devices and checks that the mesh covers them exactly."""
    dims = [int(data), int(fsdp), int(tensor)]
    if dims.count(-1) > 1:
        raise MeshError(f"mesh (data, fsdp, tensor) = {tuple(dims)}: at most one axis may be -1")
    if any(d == 0 or d < -1 for d in dims):
        raise MeshError(f"mesh (data, fsdp, tensor) = {tuple(dims)}: sizes must be positive or -1")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if n_devices % known:
            raise MeshError(f"mesh (data, fsdp, tensor) = {tuple(dims)} does not divide the {n_devices} devices "
                            f"(the fixed axes multiply to {known})")
        dims[dims.index(-1)] = n_devices // known
    if math.prod(dims) != n_devices:
        raise MeshError(f"mesh (data, fsdp, tensor) = {tuple(dims)} has {math.prod(dims)} devices but "
                        f"{n_devices} are available; make the product equal the device count (or use -1 for one axis)")
    return tuple(dims)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (global, multi-host) devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    try:  # topology-aware placement on TPU/GPU slices; on CPU it is a plain reshape
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - fall back to host-major order (e.g. unusual slices)
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def mesh_from_config(mesh_cfg, devices=None) -> Mesh:
    return make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, devices)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules) -> P:
    """Maps logical axis names to a PartitionSpec, replicating dims the mesh axes don't divide
    and never using one mesh axis twice."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape):
        axes = table.get(name) if name is not None else None
        if axes is not None:
            tup = (axes,) if isinstance(axes, str) else tuple(axes)
            tup = tuple(a for a in tup if a not in used and mesh.shape.get(a, 1) > 1)
            if not tup or dim % _axis_size(mesh, tup):
                axes = None
            else:
                used.update(tup)
                axes = tup[0] if len(tup) == 1 else tup
        out.append(axes)
    return P(*out)


def tree_shardings(logical_tree, shape_tree, mesh: Mesh, rules):
    """NamedShardings for a tree of logical PartitionSpecs and a matching tree of shapes."""
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, logical_to_spec(tuple(spec), x.shape, mesh, rules)),
        logical_tree, shape_tree, is_leaf=lambda s: isinstance(s, P))


def param_shardings(model_cfg, mesh: Mesh, rules=DEFAULT_RULES):
    return tree_shardings(model.param_logical_axes(model_cfg), model.param_shapes(model_cfg), mesh, rules)


def opt_state_shardings(tx, params_shape, params_sharding, mesh: Mesh):
    """Optimizer-state leaves that mirror a parameter get its sharding; the rest are replicated."""
    state_shape = jax.eval_shape(tx.init, params_shape)
    replicated = NamedSharding(mesh, P())
    out = {}

    def trace():  # tree_map_params re-runs tx.init; tracing it keeps that free of eager ops (no compile)
        out["shardings"] = optax.tree_map_params(tx, lambda _, s: s, state_shape, params_sharding,
                                                 transform_non_params=lambda _: replicated)

    jax.eval_shape(trace)
    return out["shardings"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[B, L] arrays: rows split over the data-parallel axes, sequence replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return _axis_size(mesh, BATCH_AXES)


def check_batch(global_batch: int, mesh: Mesh, grad_accum: int = 1) -> None:
    dp = data_parallel_size(mesh)
    if global_batch % grad_accum:
        raise MeshError(f"train.batch_size={global_batch} is not divisible by train.grad_accum={grad_accum}")
    if (global_batch // grad_accum) % dp:
        raise MeshError(f"the micro-batch of {global_batch // grad_accum} sequences (batch_size / grad_accum) is not "
                        f"divisible by the data-parallel size {dp} (mesh data x fsdp)")


def mesh_context(mesh: Mesh):
    """The mesh as the ambient mesh for logical sharding constraints, across jax versions."""
    if hasattr(jax, "set_mesh"):
        return jax.set_mesh(mesh)
    if hasattr(jax.sharding, "use_mesh"):
        return jax.sharding.use_mesh(mesh)
    return mesh


def place(tree, shardings):
    """Puts a tree of host (numpy) arrays on the mesh; works on multi-host since every host holds the full
    array. Floating leaves become float32 (master weights); the model casts to its compute dtype."""
    def put(x, sh: NamedSharding):
        x = np.asarray(x, dtype=np.float32) if np.asarray(x).dtype.kind == "f" else np.asarray(x)
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def process_rows(sharding: NamedSharding, shape: Sequence[int]) -> list[int]:
    """The rows of a global [B, ...] array under `sharding` that this process's devices hold, in order.

    `jax.make_array_from_process_local_data(sharding, local, shape)` takes local[i] as row process_rows[i];
    on a mesh whose devices are in process order (CPU processes; most slices) they are contiguous."""
    index_map = sharding.addressable_devices_indices_map(tuple(shape))
    return sorted({r for idx in index_map.values() for r in range(*idx[0].indices(shape[0]))})


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global [B, ...] array (those `process_rows` names, in that order) on the
    host; the whole array on one process. Replicas (e.g. over the tensor axis) are read once."""
    first = {}
    for s in x.addressable_shards:
        first.setdefault(s.index[0].indices(x.shape[0])[0], s)
    return np.concatenate([np.asarray(first[k].data) for k in sorted(first)])
