"""Sharding as data: a mesh from config and ordered regex rules -> PartitionSpec.

Mesh axes are `data` (batch), `fsdp` (batch and parameter shards) and
`tensor` (heads / hidden units). A parameter's '/'-joined path is matched
against the rules in order; the first match gives its PartitionSpec. A mesh
axis that does not divide the dimension it is assigned to is dropped for that
parameter (replicated along it), so one rule set serves every model size and
mesh shape; one device is the trivial mesh where everything is replicated.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qpo_jax import distributed

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch dimension is split over both

# Layer-stacked parameters carry a leading (replicated) layer axis.
TRANSFORMER_RULES: tuple[tuple[str, P], ...] = (
    (r"embed/embedding$", P("tensor", "fsdp")),
    (r"pos_embed/embedding$", P(None, "fsdp")),
    (r"attn/(q|k|v)/kernel$", P(None, "fsdp", "tensor", None)),
    (r"attn/(q|k|v)/bias$", P(None, "tensor", None)),
    (r"attn/o/kernel$", P(None, "tensor", None, "fsdp")),
    (r"mlp/(gate|up)/kernel$", P(None, "fsdp", "tensor")),
    (r"mlp/(gate|up)/bias$", P(None, "tensor")),
    (r"mlp/down/kernel$", P(None, "tensor", "fsdp")),
    (r"lm_head/kernel$", P("fsdp", "tensor")),
    (r".*", P()),  # norms, remaining biases, scalars: replicated
)


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh with the named axis sizes; one size may be -1 (all remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  unknown = set(axes) - set(AXES)
  if unknown:
    raise ValueError(f"mesh: unknown axes {sorted(unknown)}; use {AXES}")
  sizes = {a: int(axes.get(a, 1)) for a in AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"mesh: sizes must be positive with at most one -1, got {dict(axes)}")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if len(devices) % fixed:
      raise ValueError(f"mesh {dict(axes)}: {len(devices)} devices not divisible by {fixed}")
    sizes[free[0]] = len(devices) // fixed
  total = math.prod(sizes.values())
  if total > len(devices):
    raise ValueError(f"mesh {sizes} needs {total} devices, only {len(devices)} available")
  grid = np.asarray(devices[:total]).reshape([sizes[a] for a in AXES])
  return Mesh(grid, AXES)


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def spec_for(name: str, shape: Sequence[int], mesh: Mesh,
             rules: Sequence[tuple[str, P]] = TRANSFORMER_RULES) -> P:
  """The first matching rule's spec, with axes that do not divide their dimension dropped."""
  for pattern, spec in rules:
    if re.search(pattern, name):
      break
  else:
    raise ValueError(f"no partition rule matches parameter {name!r}; add a catch-all rule")
  if len(spec) > len(shape):
    raise ValueError(f"rule {pattern!r} gives {spec} for {name} of rank {len(shape)}")
  fitted = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axis,) if isinstance(axis, str) else tuple(axis or ())
    size = math.prod(mesh.shape[a] for a in names)
    if names and dim % size:
      logging.info("sharding: %s dim %d not divisible by %s=%d; replicating it", name, dim,
                   names, size)
      axis = None
    fitted.append(axis)
  while fitted and fitted[-1] is None:  # canonical form: P(None, None) == P()
    fitted.pop()
  return P(*fitted)


def param_shardings(params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, P]] = TRANSFORMER_RULES) -> Any:
  """NamedSharding for every leaf of a parameter tree (arrays or ShapeDtypeStructs)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, spec_for(path_str(path), x.shape, mesh, rules)), params)


def shard_params(params: Any, mesh: Mesh | None,
                 rules: Sequence[tuple[str, P]] = TRANSFORMER_RULES):
  """Places a (host or device) parameter tree on the mesh by the rules (any process count).

  Without a mesh, host arrays go to the default device (device arrays stay where they
  are). Host (numpy) parameters handed to a jitted call are copied in at every call:
  for SmolLM2's 540 MB, 50 ms and a transient second copy per call on the dev CPU.
  """
  if mesh is None:
    return jax.device_put(params)
  return jax.tree_util.tree_map(distributed.put, params, param_shardings(params, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dimension split over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def batch_multiple(mesh: Mesh) -> int:
  """Batch sizes must be a multiple of this to split evenly."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of a tree whole on every device of the mesh."""
  return jax.tree_util.tree_map(lambda x: distributed.put(x, NamedSharding(mesh, P())), tree)


def local_rows(mesh: Mesh | None, n: int) -> np.ndarray:
  """The rows of an [n, ...] batch that this process's devices hold (all of them with one
  process or no mesh): what a process must read and tokenise of a batch it places."""
  if mesh is None or not distributed.multi():
    return np.arange(n)
  held = batch_sharding(mesh, 1).addressable_devices_indices_map((n,))
  return np.unique(np.concatenate([np.arange(n)[index[0]] for index in held.values()]))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places every array of a batch with its leading dimension split over the batch axes.

  Over several processes each one places only the rows of its own devices.
  """
  def put(x):
    x = x if isinstance(x, jax.Array) else np.asarray(x)  # typed PRNG keys stay jax arrays
    if x.shape[0] % batch_multiple(mesh):
      raise ValueError(f"batch of {x.shape[0]} rows does not split over "
                       f"{batch_multiple(mesh)} data x fsdp shards; pad it first")
    return distributed.put(x, batch_sharding(mesh, x.ndim))
  return jax.tree_util.tree_map(put, batch)
