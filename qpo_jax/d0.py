"""Building D_0, a loop stage beside collection: (train query, source prompt) pairs on the target.

Every pair of the grid, or with `prompts_per_query = k` a balanced sparse
design: each query is evaluated with k of the P prompts and each prompt on
about N*k/P queries (as offline logs that benchmark many prompts on a task
look), which buys k/P as many target calls per distinct train query.

Prompts are processed in chunks. Each finished chunk's records (rewards
included: a prompt's avg_acc is over all the queries it was evaluated on,
which a chunk holds in full) are written as one CRC-checked shard under
`<dir>.partial/`, then a `<shard>.json` with its record count and sha256. A
rerun after a kill reads back the chunks whose file matches its sha256 and
holds the count the grid expects, and redoes any other (unfinished, damaged,
cut at a record boundary, or from another grid) from the evaluation cache, so
nothing is evaluated twice. At the end the normaliser is fitted and the
dataset is written atomically with every record (expert filtering happens when
a round draws its training data); the partial directory is then removed.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from qpo_jax import distributed, evaluation, rewards
from qpo_jax.eval_cache import EvalCache
from qpo_jax.store import dataset
from qpo_jax.store.records import Record, record_from_outcome
from qpo_jax.store.tfrecord import CorruptRecordError, file_sha256, write_records
from qpo_jax.store import records as records_lib
from qpo_jax.tasks.base import Example, Task
from qpo_jax.utils import atomic_write_text, progress_bar, read_json
from qpo_jax.targets import Target


def query_assignment(num_queries: int, num_prompts: int, per_query: int, seed: int
                     ) -> list[list[int]]:
  """For each prompt, the indices of the queries it is evaluated on (in query order).

  `per_query` <= 0 or >= num_prompts: every query. Otherwise query i (in a
  seeded order) gets prompts (i*k .. i*k+k-1) mod P of a seeded prompt order,
  so every query has k distinct prompts and the prompts' counts differ by at most 1.
  """
  if per_query <= 0 or per_query >= num_prompts:
    return [list(range(num_queries)) for _ in range(num_prompts)]
  rng = np.random.default_rng(seed)
  query_order, prompt_order = rng.permutation(num_queries), rng.permutation(num_prompts)
  out: list[list[int]] = [[] for _ in range(num_prompts)]
  for rank, q in enumerate(query_order):
    for j in range(per_query):
      out[prompt_order[(rank * per_query + j) % num_prompts]].append(int(q))
  return [sorted(qs) for qs in out]


def evaluate_records(task: Task, target: Target,
                     grid: Sequence[tuple[tuple[str, str], Sequence[Example]]],
                     *, setting: str, demo_sets=(), cache: EvalCache, split: str, loop: int,
                     max_new_tokens: int = 256, nll_term: str = "token") -> list[Record]:
  """Evaluates each ((source, prompt), its queries) of a chunk; rewarded records (one batch)."""
  pairs = [(q, p) for (_, p), queries in grid for q in queries]
  sources = [s for (s, _), queries in grid for _ in queries]
  outcomes = evaluation.evaluate_pairs(task, target, pairs, setting=setting, demo_sets=demo_sets,
                                       cache=cache, max_new_tokens=max_new_tokens)
  rows = rewards.with_rewards([p for _, p in pairs], outcomes, setting, task.kind,
                              nll_term=nll_term)
  return [record_from_outcome(task=task, example=q, prompt=p, outcome=o, target=target.identity,
                              setting=setting, split=split, prompt_source=s, loop=loop)
          for (q, p), s, o in zip(pairs, sources, rows)]


def _chunk_path(partial: str, setting: str, index: int) -> str:
  return os.path.join(partial, f"{setting}-chunk-{index:05d}.tfrecord")


def _finished_chunk(path: str, expected: int) -> list[Record] | None:
  """The records of a finished chunk, or None if it must be (re)done: missing, without its
  count and checksum, not matching them, damaged, or not the size this grid gives it."""
  if not os.path.exists(path):
    return None
  stamp = read_json(path + ".json")
  try:
    if stamp is None:
      raise CorruptRecordError(f"{path}: no {path}.json (the chunk did not finish)")
    if stamp.get("count") != expected:
      raise CorruptRecordError(f"{path}: {stamp.get('count')} records, this grid expects "
                               f"{expected}")
    if file_sha256(path) != stamp.get("sha256"):
      raise CorruptRecordError(f"{path}: sha256 does not match {path}.json")
    recs = dataset.read_shard(path)
    if len(recs) != expected:
      raise CorruptRecordError(f"{path}: {len(recs)} records, {expected} expected")
    return recs
  except CorruptRecordError as e:
    logging.warning("redoing chunk from the cache: %s", e)
    return None


def build(directory: str, task: Task, target: Target, queries: Sequence[Example],
          prompts: Sequence[tuple[str, str]], *, settings: Sequence[str],
          demo_sets=(), cache: EvalCache, prompts_per_chunk: int = 4,
          prompts_per_query: int = 0, seed: int = 0, max_new_tokens: int = 256,
          nll_term: str = "token", meta: dict[str, Any] | None = None,
          final_meta: Callable[[], dict[str, Any]] | None = None
          ) -> dict[str, Any]:
  """Builds (or finishes, or just returns) the D_0 dataset at `directory`; returns its manifest.

  `final_meta()` is called after the last evaluation and its fields go into the
  manifest (the stage's cost), so they are written in the same atomic step.
  """
  if os.path.exists(os.path.join(directory, dataset.MANIFEST)):
    logging.info("D_0 at %s is complete; not rebuilding", directory)
    return dataset.read_manifest(directory)
  partial = directory.rstrip("/") + ".partial"
  if distributed.is_writer():
    os.makedirs(partial, exist_ok=True)
  recs: list[Record] = []
  assigned = query_assignment(len(queries), len(prompts), prompts_per_query, seed)
  grid = [(p, [queries[i] for i in qs]) for p, qs in zip(prompts, assigned)]
  bar = progress_bar(total=sum(len(qs) for _, qs in grid) * len(settings), desc="D_0",
                     unit="pair")
  for setting in settings:
    for index, start in enumerate(range(0, len(prompts), prompts_per_chunk)):
      path = _chunk_path(partial, setting, index)
      expected = sum(len(qs) for _, qs in grid[start:start + prompts_per_chunk])
      done = _finished_chunk(path, expected)
      distributed.barrier(f"D_0 {setting} chunk {index} checked")  # before anyone writes it
      if done is not None:
        recs += done
        bar.update(expected)
        continue
      chunk = evaluate_records(task, target, grid[start:start + prompts_per_chunk],
                               setting=setting, demo_sets=demo_sets, cache=cache,
                               split="train", loop=0, max_new_tokens=max_new_tokens,
                               nll_term=nll_term)
      count, sha256 = write_records(path, (records_lib.to_example(r) for r in chunk))
      atomic_write_text(path + ".json", json.dumps({"count": count, "sha256": sha256}))
      distributed.barrier(f"D_0 {setting} chunk {index} written")
      recs += dataset.read_shard(path)  # as stored (float32), the same as a resumed run sees
      bar.update(expected)
      logging.info("D_0 %s: %d of %d prompts done", setting, min(start + prompts_per_chunk,
                                                                  len(prompts)), len(prompts))
  bar.close()
  normalizer = rewards.Normalizer.fit(r.reward for r in recs)
  manifest = dataset.write_dataset(
      directory, recs, normalizer=normalizer,
      meta={**(meta or {}), "loop": 0, "evaluated": len(recs), "settings": list(settings),
            "prompts_per_query": prompts_per_query or len(prompts), "nll_term": nll_term,
            **(final_meta() if final_meta else {})})
  if distributed.is_writer():
    shutil.rmtree(partial, ignore_errors=True)
  return manifest
