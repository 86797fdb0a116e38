"""sha256 of every file of a directory, written beside it at save time and checked on restore.

Orbax restores whatever bytes a checkpoint holds: a flipped byte in an array file
comes back as a wrong (often NaN) parameter, with no error. So a policy round
records the sha256 of each file of a checkpoint once the save has finished
(`write`), and `problem` compares before the checkpoint is read.
"""

from __future__ import annotations

import json
import os

from qpo_jax.store.tfrecord import file_sha256
from qpo_jax.utils import atomic_write_text, read_json


def _files(directory: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(root, f), directory)
                for root, _, files in os.walk(directory) for f in files)


def write(directory: str, path: str) -> None:
  """Records the sha256 of every file under `directory` in `path` (atomically)."""
  sums = {f: file_sha256(os.path.join(directory, f)) for f in _files(directory)}
  atomic_write_text(path, json.dumps(sums, indent=1, sort_keys=True))


def problem(directory: str, path: str) -> str | None:
  """None when `directory` holds exactly the files `path` recorded, with their sha256; else
  what differs (the first damaged, missing or extra file). A missing or unreadable
  record is a problem too: nothing vouches for the bytes."""
  try:
    sums = read_json(path)
  except ValueError:
    sums = None
  if not isinstance(sums, dict) or not sums:
    return f"its checksums {path} are missing or unreadable"
  found = _files(directory) if os.path.isdir(directory) else []
  for f in sorted(set(sums) | set(found)):
    if f not in found:
      return f"{os.path.join(directory, f)} is missing"
    if f not in sums:
      return f"{os.path.join(directory, f)} was not in the checkpoint when it was saved"
    if file_sha256(os.path.join(directory, f)) != sums[f]:
      return f"{os.path.join(directory, f)} differs from its sha256 at save time"
  return None
