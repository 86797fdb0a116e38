"""A loop's dataset on disk: sharded TFRecords plus a manifest, complete or absent.

Layout of a dataset directory:

  data-00000-of-00003.tfrecord ...   tf.train.Example records (records.py)
  manifest.json                      schema version, counts, reward min/max/mean,
                                     the fitted normaliser, counts per prompt
                                     source, sha256 per shard, free-form meta

Everything is first written into a sibling temporary directory that is renamed
into place at the end, so a reader either finds a complete dataset or none.
Reading checks every shard's sha256 and every record's CRCs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from qpo_jax import distributed
from qpo_jax.rewards import Normalizer
from qpo_jax.store import records as records_lib
from qpo_jax.store.records import Record
from qpo_jax.store.tfrecord import (CorruptRecordError, file_sha256, read_record_at, read_records,
                                    record_offsets, write_records)
from qpo_jax.utils import atomic_write_text
from qpo_jax.workdir import MANIFEST



class IncompleteDatasetError(FileNotFoundError):
  """The directory holds no finished dataset (no manifest)."""


def shard_name(i: int, n: int) -> str:
  return f"data-{i:05d}-of-{n:05d}.tfrecord"


def summarize(recs: Sequence[Record]) -> dict[str, Any]:
  rewards = np.asarray([r.reward for r in recs], np.float64)
  return {
      "count": len(recs),
      "queries": len({r.query_id or r.query for r in recs}),
      "prompts": len({r.prompt for r in recs}),
      "reward": ({"min": float(rewards.min()), "max": float(rewards.max()),
                  "mean": float(rewards.mean())} if len(recs) else {}),
      "by_source": dict(sorted(collections.Counter(r.prompt_source for r in recs).items())),
      "by_loop": {str(k): v for k, v in sorted(collections.Counter(r.loop for r in recs).items())},
  }


def write_shards(directory: str, recs: Sequence[Record], records_per_shard: int) -> list[dict]:
  """Writes the shards of `recs` into `directory`; returns their manifest entries."""
  n = max(1, -(-len(recs) // max(1, records_per_shard)))
  entries = []
  for i in range(n):
    part = recs[i * records_per_shard:(i + 1) * records_per_shard]
    name = shard_name(i, n)
    count, digest = write_records(os.path.join(directory, name),
                                  (records_lib.to_example(r) for r in part))
    entries.append({"file": name, "count": count, "sha256": digest})
  return entries


def check_complete(directory: str) -> None:
  """Fails, saying what to delete, on a dataset directory that has no manifest (a dataset is
  renamed into place whole, so it was damaged or is not ours)."""
  if os.path.isdir(directory) and not os.path.exists(os.path.join(directory, MANIFEST)):
    raise FileExistsError(f"{directory} has no {MANIFEST}: it is not a complete dataset (its "
                          f"shards cannot be checked); delete the directory {directory} to "
                          "rebuild it")


def write_dataset(directory: str, recs: Sequence[Record], *, records_per_shard: int = 4096,
                  normalizer: Normalizer | None = None, meta: Mapping[str, Any] | None = None,
                  overwrite: bool = False) -> dict[str, Any]:
  """Writes a complete dataset at `directory` atomically; returns its manifest.

  In a multi-process run the writer process writes it and the others read it.
  """
  directory = os.path.abspath(directory)
  if not distributed.is_writer():
    distributed.barrier(f"dataset {directory}")
    return read_manifest(directory)
  if os.path.exists(directory) and not overwrite:
    check_complete(directory)
    raise FileExistsError(f"dataset {directory} already exists; delete that directory to rebuild "
                          "it")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(directory) + ".tmp-")
  try:
    manifest = {"schema_version": records_lib.SCHEMA_VERSION, **summarize(recs),
                "normalizer": normalizer.to_dict() if normalizer else None,
                "shards": write_shards(tmp, list(recs), records_per_shard),
                "meta": dict(meta or {})}
    atomic_write_text(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=2))
    if os.path.exists(directory):
      old = directory + ".old"
      shutil.rmtree(old, ignore_errors=True)
      os.replace(directory, old)
      os.replace(tmp, directory)
      shutil.rmtree(old)
    else:
      os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  distributed.barrier(f"dataset {directory}")
  return manifest


def read_manifest(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise IncompleteDatasetError(f"no finished dataset at {directory} (no {MANIFEST})")
  with open(path) as f:
    try:
      manifest = json.load(f)
    except json.JSONDecodeError as e:
      raise CorruptRecordError(f"{path} is not valid JSON: {e}") from None
  if manifest.get("schema_version") != records_lib.SCHEMA_VERSION:
    raise ValueError(f"{path}: schema version {manifest.get('schema_version')}, this code reads "
                     f"{records_lib.SCHEMA_VERSION}")
  return manifest


def read_shard(path: str) -> list[Record]:
  return [records_lib.from_example(data, f"{path}, record {i}")
          for i, data in enumerate(read_records(path))]


def _check_sha256(path: str, entry: Mapping[str, Any]) -> None:
  if file_sha256(path) != entry["sha256"]:
    read_shard(path)  # names the record at fault, if one is
    raise CorruptRecordError(f"{path}: sha256 differs from {MANIFEST} (file changed)")


def read_dataset(directory: str, verify: bool = True) -> tuple[list[Record], dict[str, Any]]:
  """All records of a finished dataset and its manifest; shards are checked."""
  manifest = read_manifest(directory)
  recs: list[Record] = []
  for entry in manifest["shards"]:
    path = os.path.join(directory, entry["file"])
    if verify:
      _check_sha256(path, entry)
    part = read_shard(path)
    if len(part) != entry["count"]:
      raise CorruptRecordError(f"{path}: {len(part)} records, {MANIFEST} says {entry['count']}")
    recs += part
  return recs, manifest


class RecordIndex:
  """Random access to a finished dataset's records, for a process that needs only some.

  Built from the manifest and the shards' record headers (no record is parsed);
  `read` checks each record's CRCs, `verify_shards` the sha256 of whole shards.
  """

  def __init__(self, directory: str):
    self.directory = directory
    self.manifest = read_manifest(directory)
    self._places: list[tuple[int, int, int]] = []  # (shard, index in shard, byte offset)
    for s, entry in enumerate(self.manifest["shards"]):
      offsets = record_offsets(self._path(s))
      if len(offsets) != entry["count"]:
        raise CorruptRecordError(f"{self._path(s)}: {len(offsets)} records, {MANIFEST} says "
                                 f"{entry['count']}")
      self._places += [(s, i, off) for i, off in enumerate(offsets)]

  def _path(self, shard: int) -> str:
    return os.path.join(self.directory, self.manifest["shards"][shard]["file"])

  def __len__(self) -> int:
    return len(self._places)

  def verify_shards(self, shards: Iterable[int]) -> None:
    for s in shards:
      _check_sha256(self._path(s), self.manifest["shards"][s])

  def read(self, indices: Iterable[int]) -> list[Record]:
    """The records at these positions of the dataset (in manifest shard order)."""
    out, handles = [], {}
    try:
      for i in indices:
        s, j, offset = self._places[i]
        if s not in handles:
          handles[s] = open(self._path(s), "rb")  # pylint: disable=consider-using-with
        where = f"{self._path(s)}, record {j}"
        out.append(records_lib.from_example(
            read_record_at(handles[s], self._path(s), j, offset), where))
    finally:
      for fh in handles.values():
        fh.close()
    return out


def dedupe(recs: Iterable[Record]) -> list[Record]:
  """Keeps the first record of each (task, setting, target, query, prompt)."""
  seen, out = set(), []
  for r in recs:
    if r.key() not in seen:
      seen.add(r.key())
      out.append(r)
  return out


def merge(old: Sequence[Record], new: Sequence[Record]) -> list[Record]:
  """D_{t+1} = D_t U new, repeats dropped (expert filtering is applied when training reads it)."""
  return dedupe(list(old) + list(new))


def normalized(recs: Sequence[Record], normalizer: Normalizer) -> list[Record]:
  """Copies with rewards mapped to 0..100 by a stored normaliser."""
  return [dataclasses.replace(r, reward=normalizer(r.reward)) for r in recs]
