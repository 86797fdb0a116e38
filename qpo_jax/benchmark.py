"""Timing helpers shared by the benchmarks in experiments/: best-of-N timing, matmul peak, output."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from qpo_jax.utils import atomic_write_text


def best_time(fn: Callable[[], Any], repeats: int) -> float:
  """Best wall time of `fn` (blocked on its result) after one warm-up / compile call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_peak(repeats: int, n: int = 2048) -> float:
  """FLOP/s of a jitted n x n f32 matmul on this machine: the denominator of MFU."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n ** 3 / best_time(lambda: f(a), repeats)


def write_results(path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
                  meta: dict[str, Any]) -> str:
  """Writes rows as JSON (`path`) and a Markdown table (`path` with .md); returns the table."""
  table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    table.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                                   for c in columns) + " |")
  markdown = "\n".join(table) + "\n"
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps({"meta": meta, "rows": list(rows)}, indent=2))
    atomic_write_text(os.path.splitext(path)[0] + ".md", markdown)
  return markdown
