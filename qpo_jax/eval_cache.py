"""Persistent evaluation cache: a (query, prompt) pair is never sent to the target twice.

One SQLite file in the workdir. The key is a hash of (target identity, task,
setting, query, prompt, demonstration set, and the exact text sent), so a
changed template or demo set is a different key. The value is the target's raw
result as JSON. A `usage` table counts target calls, prompt tokens and
generated tokens per target for cost accounting; it is updated in the same
transaction as the results, so a killed run never counts work it did not keep.
SQLite commits are atomic: after a crash the file holds every finished batch.
The file is checked (`PRAGMA quick_check`) when it is opened; a corrupt one, or one
that cannot be written (full disk, read-only), is an error naming the file and the
way out, not SQLite's bare message at some later stage.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import threading
from typing import Any, Iterable, Mapping, Sequence

from qpo_jax import distributed
from qpo_jax.workdir import Workdir


def cache_key(*parts: Any) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class EvalCache:
  """Results by key, plus usage counters per target. `path=None` keeps them in memory.

  `read_only` (the processes of a multi-process run other than the writer): the
  file is read, and what `put_many` gets is kept in memory only; the writer
  process stores the same results, so every process sees the same cache.
  """

  def __init__(self, path: str | None, read_only: bool = False):
    self.path = path
    self._overlay: dict[str, Any] | None = {} if read_only else None
    if path and not read_only:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._lock = threading.Lock()
    with self._errors():
      if read_only:
        self._db = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True,
                                   check_same_thread=False, timeout=60)
      else:
        self._db = sqlite3.connect(path or ":memory:", check_same_thread=False, timeout=60)
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS usage (target TEXT PRIMARY KEY, calls INTEGER NOT NULL,"
            " prompt_tokens INTEGER NOT NULL, generated_tokens INTEGER NOT NULL);")
      problems = [" ".join(r[0].split()) for r in self._db.execute("PRAGMA quick_check(20)")]
      if problems != ["ok"]:
        raise sqlite3.DatabaseError(f"quick_check: {problems[0]}"
                                    + (", and more" if len(problems) > 1 else ""))

  @contextlib.contextmanager
  def _errors(self):
    """SQLite errors as an OSError (cannot write) or ValueError (corrupt) naming the file."""
    try:
      yield
    except sqlite3.DatabaseError as e:
      text = str(e)
      if "disk is full" in text:
        raise OSError(errno.ENOSPC, f"cannot write the evaluation cache ({text})",
                      self.path) from None
      if "disk I/O error" in text:
        raise OSError(errno.EIO, f"cannot read or write the evaluation cache ({text})",
                      self.path) from None
      if "readonly" in text or "unable to open" in text:
        raise OSError(errno.EROFS if "readonly" in text else errno.EACCES,
                      f"cannot write the evaluation cache ({text})", self.path) from None
      raise ValueError(
          f"evaluation cache {self.path} is corrupt ({text}). It holds only target results: "
          f"move it away (mv {self.path} {self.path}.corrupt) and rerun; the pairs it held are "
          "sent to the target again, everything else in the workdir is kept.") from None

  @classmethod
  def of_workdir(cls, workdir: str) -> EvalCache:
    """The run's cache: <workdir>/eval_cache.sqlite (read-only but for the writer process)."""
    path = Workdir(workdir).cache
    if not distributed.multi():
      return cls(path)
    cache = cls(path) if distributed.is_writer() else None  # creates the file
    distributed.barrier("eval_cache")
    return cache if cache is not None else cls(path, read_only=True)

  def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
    found = {k: self._overlay[k] for k in keys if k in self._overlay} if self._overlay else {}
    keys = [k for k in keys if k not in found]
    with self._lock, self._errors():
      for start in range(0, len(keys), 500):
        chunk = list(keys[start:start + 500])
        rows = self._db.execute(
            f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        found.update((k, json.loads(v)) for k, v in rows)
    return found

  def put_many(self, items: Mapping[str, Any], target: str, calls: int, prompt_tokens: int,
               generated_tokens: int) -> None:
    """Stores results and adds their cost to the target's usage, in one transaction."""
    if self._overlay is not None:
      self._overlay.update(items)
      return
    with self._lock, self._errors(), self._db:
      self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in items.items()])
      self._db.execute(
          "INSERT INTO usage VALUES (?, ?, ?, ?) ON CONFLICT(target) DO UPDATE SET "
          "calls = calls + excluded.calls, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
          " generated_tokens = generated_tokens + excluded.generated_tokens",
          (target, calls, prompt_tokens, generated_tokens))

  def usage(self) -> dict[str, dict[str, int]]:
    with self._lock, self._errors():
      rows = self._db.execute("SELECT target, calls, prompt_tokens, generated_tokens FROM usage")
      return {t: {"calls": c, "prompt_tokens": p, "generated_tokens": g} for t, c, p, g in rows}

  def __len__(self) -> int:
    with self._lock, self._errors():
      return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

  def close(self) -> None:
    self._db.close()


def total_usage(usages: Iterable[Mapping[str, int]]) -> dict[str, int]:
  out = {"calls": 0, "prompt_tokens": 0, "generated_tokens": 0}
  for u in usages:
    for k in out:
      out[k] += int(u.get(k, 0))
  return out
