"""The device mesh, logical -> mesh sharding rules, and placing batches on the mesh.

A run config names three mesh axes (``config.mesh.data``, ``.fsdp``, ``.tensor``; one of them
may be -1 = "the rest of the devices"). Model code only names logical axes; the rules in
``config.sharding_rules`` (default :data:`zoo.sharding.DEFAULT_RULES`) map them onto the mesh.
Pure data parallelism (what ``pmap`` used to do) is the mesh ``data=N``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zoo import sharding as sh

log = logging.getLogger(__name__)

BATCH_AXES = (sh.DATA, sh.FSDP)  # the global batch is split over both


def maybe_initialize_distributed() -> bool:
  """``jax.distributed.initialize()`` when launched as one of several processes.

  Detects the usual launchers (SLURM, Open MPI, multi-host TPU slices: JAX reads their
  environment) and a manual launch with ``JAX_COORDINATOR_ADDRESS=host:port``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set on every process. Must run before any
  other JAX call; single-process runs are untouched.

  A process that stops sending heartbeats for ``ZOO_HEARTBEAT_TIMEOUT_S`` seconds (default
  15; JAX's own default is 100) is declared dead and the others stop, rather than waiting in
  a collective for minutes.
  """
  env = os.environ
  multi = (
      "JAX_COORDINATOR_ADDRESS" in env
      or int(env.get("SLURM_NTASKS", "1")) > 1
      or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
      or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  )
  if not multi or jax.distributed.is_initialized():
    return False
  timeout = env.get("ZOO_HEARTBEAT_TIMEOUT_S", "15")
  if not timeout.isdigit() or int(timeout) < 1:
    raise ValueError(
        f"ZOO_HEARTBEAT_TIMEOUT_S={timeout!r} is not a positive whole number of seconds; "
        "unset it (15 s) or set e.g. ZOO_HEARTBEAT_TIMEOUT_S=60."
    )
  kwargs = {"heartbeat_timeout_seconds": int(timeout)}
  if "JAX_NUM_PROCESSES" in env:
    kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
  if "JAX_PROCESS_ID" in env:
    kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  return True


def mesh_shape(mesh_cfg: Any, num_devices: int) -> dict[str, int]:
  """Resolve ``-1`` in ``{data, fsdp, tensor}`` so that the sizes multiply to ``num_devices``."""
  sizes = {axis: int(mesh_cfg[axis]) for axis in sh.MESH_AXES}
  free = [a for a, n in sizes.items() if n == -1]
  if len(free) > 1 or any(n == 0 or n < -1 for n in sizes.values()):
    raise ValueError(f"mesh sizes must be positive with at most one -1; got {sizes}.")
  fixed = int(np.prod([n for n in sizes.values() if n != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(
          f"mesh {sizes}: the fixed axes take {fixed} devices, which does not divide the "
          f"{num_devices} available; change --config.mesh.* so their product divides {num_devices}."
      )
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(
        f"mesh {sizes} needs {fixed} devices but {num_devices} are in use; set one axis to -1 "
        f"(e.g. --config.mesh.data=-1) or make the sizes multiply to {num_devices}."
    )
  return sizes


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``Mesh`` with axes ``(data, fsdp, tensor)`` over ``devices`` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_cfg, len(devices))
  shape = tuple(sizes[a] for a in sh.MESH_AXES)
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    # A subset of a slice has no physical topology to respect: plain order.
    grid = np.asarray(devices, dtype=object).reshape(shape)
  auto = (jax.sharding.AxisType.Auto,) * len(shape)
  return Mesh(grid, sh.MESH_AXES, axis_types=auto)


def rules_from_config(config: Any) -> tuple[tuple[str, Any], ...]:
  """Logical -> mesh axis rules: ``config.sharding_rules`` or the defaults."""
  rules = config.get("sharding_rules") if hasattr(config, "get") else None
  rules = rules or sh.DEFAULT_RULES
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"each sharding rule is (logical_axis, mesh_axes); got {rule!r}.")
    name, target = rule
    target = tuple(target) if isinstance(target, list) else target
    for axis in (target if isinstance(target, tuple) else (target,)):
      if axis is not None and axis not in sh.MESH_AXES:
        raise ValueError(f"rule {rule!r} names mesh axis {axis!r}; mesh axes are {sh.MESH_AXES}.")
    out.append((name, target))
  return tuple(out)


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def check_batch_size(global_batch_size: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
  """The global batch must split evenly into micro-batches and over the data axes."""
  dp = data_parallel_size(mesh)
  shape = ", ".join(f"{a}={mesh.shape[a]}" for a in sh.MESH_AXES)
  if grad_accum_steps < 1 or global_batch_size % grad_accum_steps:
    raise ValueError(
        f"train.batch_size={global_batch_size} is not divisible by "
        f"train.grad_accum_steps={grad_accum_steps}; pick a batch size that is a multiple of it."
    )
  micro = global_batch_size // grad_accum_steps
  if micro % dp:
    good = dp * grad_accum_steps * max(1, round(global_batch_size / (dp * grad_accum_steps)))
    raise ValueError(
        f"the global batch (train.batch_size={global_batch_size}"
        + (f" / grad_accum_steps={grad_accum_steps} = {micro}" if grad_accum_steps > 1 else "")
        + f") is not divisible by the data-parallel size {dp} (mesh {shape}: data x fsdp); "
        f"use --config.train.batch_size={good} or change --config.mesh.data / .fsdp."
    )
  if global_batch_size % jax.process_count():
    raise ValueError(
        f"train.batch_size={global_batch_size} must be divisible by the number of processes "
        f"{jax.process_count()}."
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data`` x ``fsdp``; the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def place_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays split over the batch axes of ``mesh``."""
  sharding = batch_sharding(mesh)
  out = {}
  for key, x in local_batch.items():
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
    out[key] = jax.make_array_from_process_local_data(sharding, x, global_shape)
  return out


def _fits(shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
  """Drop mesh axes from dimensions they do not divide (those dimensions are replicated)."""
  fixed = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
    names = axes if isinstance(axes, tuple) else (axes,)
    names = tuple(a for a in names if a is not None)
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    if names and dim % size:
      log.warning(
          "dimension %d is not divisible by mesh axes %s (%d): replicated", dim, names, size
      )
      fixed.append(None)
    else:
      fixed.append(axes)
  return PartitionSpec(*fixed)


def param_shardings(abstract_params: Any, mesh: Mesh, rules) -> Any:
  """``NamedSharding`` per parameter from its logical axis names (boxed abstract params)."""
  logical = nn.get_partition_spec(abstract_params)
  mesh_specs = nn.logical_to_mesh(logical, rules)
  shapes = nn.unbox(abstract_params)
  return jax.tree.map(
      lambda s, spec: NamedSharding(mesh, _fits(s.shape, spec, mesh)),
      shapes,
      mesh_specs,
      is_leaf=lambda x: isinstance(x, PartitionSpec),
  )
