"""Building D_0 from scratch: every (train query, source prompt) pair evaluated on the target.

Prompts are processed in chunks. Each finished chunk's records (rewards
included: a prompt's avg_acc is over all the queries it was evaluated on,
which a chunk holds in full) are written as one CRC-checked shard under
`<dir>.partial/`. A rerun after a kill reads the finished chunks back, skips
them, and gets the pairs of an interrupted chunk from the evaluation cache, so
nothing is evaluated twice. At the end the records are filtered by the reward
threshold, the normaliser is fitted, and the dataset is written atomically;
the partial directory is then removed.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Sequence

from absl import logging

from qpo_jax import evaluation, rewards
from qpo_jax.eval_cache import EvalCache
from qpo_jax.store import dataset
from qpo_jax.store.records import Record, record_from_outcome
from qpo_jax.store.tfrecord import CorruptRecordError, write_records
from qpo_jax.store import records as records_lib
from qpo_jax.tasks.base import Example, Task


def evaluate_records(task: Task, target, queries: Sequence[Example],
                     prompts: Sequence[tuple[str, str]], *, setting: str, demo_sets=(),
                     cache: EvalCache, split: str, loop: int,
                     max_new_tokens: int = 256) -> list[Record]:
  """Evaluates every (query, prompt) pair and returns rewarded records (one batch)."""
  pairs = [(q, p) for _, p in prompts for q in queries]
  sources = [s for s, _ in prompts for _ in queries]
  outcomes = evaluation.evaluate_pairs(task, target, pairs, setting=setting, demo_sets=demo_sets,
                                       cache=cache, max_new_tokens=max_new_tokens)
  rows = [dict(o, prompt=p) for o, (_, p) in zip(outcomes, pairs)]
  rows = rewards.with_rewards(rows, setting, task.kind)
  return [record_from_outcome(task=task, example=q, prompt=p, outcome=o, target=target.identity,
                              setting=setting, split=split, prompt_source=s, loop=loop)
          for (q, p), s, o in zip(pairs, sources, rows)]


def _chunk_path(partial: str, setting: str, index: int) -> str:
  return os.path.join(partial, f"{setting}-chunk-{index:05d}.tfrecord")


def build_initial_dataset(directory: str, task: Task, target, queries: Sequence[Example],
                          prompts: Sequence[tuple[str, str]], *, settings: Sequence[str],
                          demo_sets=(), cache: EvalCache, prompts_per_chunk: int = 4,
                          threshold: float | None = None, max_new_tokens: int = 256,
                          meta: dict[str, Any] | None = None) -> dict[str, Any]:
  """Builds (or finishes, or just returns) the D_0 dataset at `directory`; returns its manifest."""
  if os.path.exists(os.path.join(directory, dataset.MANIFEST)):
    logging.info("D_0 at %s is complete; not rebuilding", directory)
    return dataset.read_manifest(directory)
  partial = directory.rstrip("/") + ".partial"
  os.makedirs(partial, exist_ok=True)
  recs: list[Record] = []
  for setting in settings:
    for index, start in enumerate(range(0, len(prompts), prompts_per_chunk)):
      path = _chunk_path(partial, setting, index)
      if os.path.exists(path):
        try:
          recs += dataset.read_shard(path)
          continue
        except CorruptRecordError as e:  # a damaged chunk is redone (from the cache)
          logging.warning("redoing chunk: %s", e)
      chunk = evaluate_records(task, target, queries, prompts[start:start + prompts_per_chunk],
                               setting=setting, demo_sets=demo_sets, cache=cache,
                               split="train", loop=0, max_new_tokens=max_new_tokens)
      write_records(path, (records_lib.to_example(r) for r in chunk))
      recs += dataset.read_shard(path)  # as stored (float32), the same as a resumed run sees
      logging.info("D_0 %s: %d of %d prompts done", setting, min(start + prompts_per_chunk,
                                                                  len(prompts)), len(prompts))
  kept_recs = rewards.keep_above(recs, threshold)
  if not kept_recs:
    raise ValueError(f"every D_0 record has a reward below the threshold {threshold}")
  normalizer = rewards.Normalizer.fit(r.reward for r in kept_recs)
  manifest = dataset.write_dataset(
      directory, kept_recs, normalizer=normalizer,
      meta={**(meta or {}), "loop": 0, "threshold": threshold, "evaluated": len(recs),
            "settings": list(settings)})
  shutil.rmtree(partial, ignore_errors=True)
  return manifest
