"""Several processes, one run: JAX's multi-controller runtime, and the few rules on top of it.

Every process runs the same program on the same workdir. The mesh spans all
processes' devices (`jax.devices()` is global once `initialize` ran), and
arrays on it are global: each process places only the rows (or parameter
slices) that live on its own devices (`put`), and reads a global result back
with `to_host`, which gathers it so every process sees the same values. The
local target therefore runs in lockstep across hosts, data- and tensor-parallel
as the mesh says: each process renders and tokenises its share of the texts
(`share`), the token ids are gathered (`allgather_share`), and every process
places only its own devices' rows of the batches. The small policy samples on
each process's own devices, each process its share of the queries, and the
texts are gathered (`allgather`).

Shared files are written by one process (`is_writer`); the others skip the
write and wait at a `barrier` before reading what it wrote. With one process
every helper is the identity or a no-op, so single-process runs pay nothing.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import socket
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import numpy as np


def _cluster_env() -> str | None:
  """The cluster JAX can set itself up from (TPU pod slice, Slurm, Open MPI), or None."""
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI"
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ:
    return "Slurm"
  if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "TPU pod slice"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> bool:
  """Joins the run's processes; True if there are several. Call before anything uses JAX.

  Explicit: all three of address ('host:port' of process 0), count and id. Without
  them, a TPU pod slice, a Slurm step or an Open MPI job is detected and JAX reads
  the rest from it; otherwise this is a single process and nothing happens. A
  process that cannot reach the coordinator within `timeout_s` fails with an
  error naming the address.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise ValueError(f"--{', --'.join(missing)} missing: --coordinator_address, "
                       "--num_processes and --process_id go together")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
    where = coordinator_address
  else:
    where = _cluster_env()
    if where is None:
      return False
  if jax.distributed.is_initialized():
    return multi()
  deadline = time.time() + timeout_s
  if coordinator_address and process_id:  # process 0 serves the address itself
    _wait_for(coordinator_address, deadline, f"process {process_id} of {num_processes}",
              timeout_s)
  # Cross-process collectives on CPU (tests, laptops); accelerators use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=max(1, int(deadline - time.time())))
  _name_log_lines()
  logging.info("process %d of %d joined via %s; %d local of %d devices", jax.process_index(),
               jax.process_count(), where, jax.local_device_count(), jax.device_count())
  return jax.process_count() > 1


def _wait_for(address: str, deadline: float, who: str, timeout_s: int) -> None:
  """Returns once something listens at 'host:port'; fails naming it at the deadline.

  (JAX itself aborts the process with a bare DEADLINE_EXCEEDED that names no address.)
  """
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"--coordinator_address={address!r} must be host:port")
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)),
                                    timeout=max(0.1, min(2.0, deadline - time.time()))):
        return
    except OSError as e:
      if time.time() >= deadline:
        raise RuntimeError(f"{who}: could not join the run at the coordinator {address} within "
                           f"{timeout_s} s ({e.strerror or e}). Start process 0 there, or check "
                           "the address, the port and the firewall.") from None
      time.sleep(0.2)


class _ProcessPrefix(py_logging.Filter):
  def filter(self, record):
    record.msg = f"[process {jax.process_index()}/{jax.process_count()}] {record.msg}"
    return True


def _name_log_lines() -> None:
  """Every log line of a multi-process run starts with its process."""
  logging.get_absl_logger().addFilter(_ProcessPrefix())


def multi() -> bool:
  """Whether this run has several processes (without starting a backend when it has one)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
  """Whether this process writes the run's shared files (process 0)."""
  return not multi() or jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all arrive (after a shared write, before reading it)."""
  if multi():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def share(n: int) -> range:
  """This process's contiguous share of n items (the first processes take one more)."""
  if not multi():
    return range(n)
  k, i = jax.process_count(), jax.process_index()
  base, extra = divmod(n, k)
  start = i * base + min(i, extra)
  return range(start, start + base + (i < extra))


def allgather(items: Sequence[Any]) -> list[Any]:
  """The concatenation, in process order, of every process's JSON-able `items`."""
  if not multi():
    return list(items)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  blob = np.frombuffer(json.dumps(list(items)).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([blob.size], np.int64)))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:blob.size] = blob
  blobs = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  out = []
  for row, size in zip(blobs, sizes.reshape(-1)):
    out += json.loads(row[:int(size)].tobytes().decode())
  return out


def allgather_share(items: Sequence[Any]) -> tuple[list[Any], range]:
  """Every process's JSON-able `items` concatenated in process order, and where this
  process's own items lie in it."""
  per_process = allgather([list(items)])
  start = sum(len(x) for x in per_process[:jax.process_index()])
  return [x for part in per_process for x in part], range(start, start + len(items))


def agree(fn: Callable[[], Any]) -> Any:
  """fn() run by every process on its own share; if any process fails, every one raises.

  Wraps local work (reading, rendering) that precedes a collective, so a bad record
  seen by one process stops all of them with its message instead of leaving the
  others waiting for it in the collective.
  """
  if not multi():
    return fn()
  try:
    out, error = fn(), ""
  except Exception as e:  # pylint: disable=broad-except
    out, error = None, f"{type(e).__name__}: {e}"
  failed = [(i, e) for i, e in enumerate(allgather([error])) if e]
  if failed:
    raise RuntimeError(f"process {failed[0][0]} failed: {failed[0][1]}")
  return out


def put(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host (or local) array placed with `sharding`, which may span processes.

  Each process copies only the slices its own devices hold; every process must
  pass the same global value (they all read the same files and seeds).
  """
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, sharding)  # already global: a reshard
  local = x if isinstance(x, jax.Array) else np.asarray(x)  # (typed PRNG keys stay jax arrays)
  return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly global) array as numpy, the same on every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
