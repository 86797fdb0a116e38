"""Helpers shared by the scripts in experiments/: timing, the matmul peak (random policy
batches: qpo_jax.testing.policy_batch, the ones the tests check) and the date, commit and
machine a dated result names."""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from qpo_jax.configs import base
from qpo_jax.policy.settings import TrainSettings


# The paper's policy optimizer (spec: AdamW 1e-3, wd 1e-4, clip 0.25, step decay).
# Every other train field (accumulation, freezing, ...) as configs/base.py sets it.
PAPER_TRAIN = dataclasses.replace(
    TrainSettings.of(base.get_config().train),
    learning_rate=1e-3, schedule="step", decay_every_epochs=20, decay_rate=0.65, grad_clip=0.25,
    weight_decay=1e-4, epochs=100)


def git_commit() -> str:
  """The short commit of this checkout ("" outside a git checkout): every dated result names it."""
  return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()


def cpu_info() -> dict[str, Any]:
  """The CPU's model name and its widest vector units (Linux; empty where unreadable): a
  cloud "Intel Xeon Processor" names no generation, its AVX-512 and AMX flags do."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = f.read().splitlines()
  except OSError:
    return {"cpu": "", "isa": []}
  field = lambda name: next((l.split(":", 1)[1].strip() for l in lines  # noqa: E731
                             if l.startswith(name)), "")
  flags = set(field("flags").split())
  return {"cpu": field("model name"),
          "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]}


def run_meta(**extra: Any) -> dict[str, Any]:
  """What every dated result records first: date, commit and machine (the same code runs
  at different speeds on different days' machines), then the script's own fields."""
  return {"date": datetime.date.today().isoformat(), "commit": git_commit(),
          "machine": {**cpu_info(), "cpus": os.cpu_count(), "jax": jax.__version__,
                      "device": jax.devices()[0].device_kind}, **extra}


def best_time(fn: Callable[[], Any], repeats: int) -> float:
  """Best wall time of `fn` (blocked on its result) after one warm-up / compile call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def best_times(fns: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, float]:
  """Best wall time of each function, timed round-robin after one warm-up call each.

  Interleaving spreads drift in machine load (and other runtimes' idle threads)
  over all contenders instead of charging it to whichever runs first.
  """
  for fn in fns.values():
    jax.block_until_ready(fn())
  best = {k: float("inf") for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      best[k] = min(best[k], time.perf_counter() - start)
  return best


def matmul_peak(repeats: int, n: int = 2048) -> float:
  """FLOP/s of a jitted n x n f32 matmul on this machine: the denominator of MFU."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n ** 3 / best_time(lambda: f(a), repeats)
