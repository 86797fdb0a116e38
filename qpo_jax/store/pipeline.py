"""The policy's training input: tokenized (return, query, prompt) in fixed-shape batches.

Queries are cut to Lq tokens and prompts (plus EOS, so the policy learns to
stop) to Lp tokens, right-padded with masks (spec: Lq = Lp = 40). Rewards are
normalised by the dataset's stored normaliser when asked. The order is a
permutation per epoch drawn from (seed, epoch), so the iterator's whole state
is two integers — `state()` goes into the checkpoint, `restore()` continues
exactly where training stopped. Every batch has `batch_size` rows (the last
partial batch of an epoch is dropped), and with a mesh it is placed split over
the data axes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from qpo_jax import decoding, sharding
from qpo_jax.rewards import Normalizer
from qpo_jax.store.records import Record


def tokenize(tokenizer, texts: Sequence[str], length: int, append_eos: bool
             ) -> tuple[np.ndarray, np.ndarray]:
  """[N, length] ids and masks, right-padded; with `append_eos` the text ends in EOS."""
  pad = decoding.pad_id(tokenizer)
  ids = np.full((len(texts), length), pad, np.int32)
  mask = np.zeros((len(texts), length), bool)
  encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
  for i, toks in enumerate(encoded):
    toks = list(toks)[:length - 1 if append_eos else length]
    if append_eos:
      toks.append(tokenizer.eos_token_id)
    ids[i, :len(toks)], mask[i, :len(toks)] = toks, True
  return ids, mask


class Batches:
  """Seeded, resumable, fixed-shape batches over a dataset's records."""

  def __init__(self, recs: Sequence[Record], tokenizer, *, query_len: int, prompt_len: int,
               batch_size: int, seed: int, normalizer: Normalizer | None = None, mesh=None):
    if len(recs) < batch_size:
      raise ValueError(f"{len(recs)} records cannot fill one batch of {batch_size}; "
                       "lower the batch size")
    if mesh is not None and batch_size % sharding.batch_multiple(mesh):
      raise ValueError(f"batch size {batch_size} does not split over "
                       f"{sharding.batch_multiple(mesh)} data shards of the mesh")
    self.query, self.query_mask = tokenize(tokenizer, [r.query for r in recs], query_len, False)
    self.prompt, self.prompt_mask = tokenize(tokenizer, [r.prompt for r in recs], prompt_len, True)
    returns = np.asarray([r.reward for r in recs], np.float32)
    self.returns = normalizer(returns).astype(np.float32) if normalizer else returns
    self.batch_size, self.seed, self.mesh = batch_size, seed, mesh
    self.steps_per_epoch = len(recs) // batch_size
    self.epoch, self.position = 0, 0

  def state(self) -> dict[str, int]:
    return {"epoch": self.epoch, "position": self.position}

  def restore(self, state: dict[str, Any]) -> None:
    self.epoch, self.position = int(state["epoch"]), int(state["position"])

  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.returns))

  def next(self) -> dict[str, Any]:
    if self.position >= self.steps_per_epoch:
      self.epoch, self.position = self.epoch + 1, 0
    rows = self._order(self.epoch)[self.position * self.batch_size:
                                   (self.position + 1) * self.batch_size]
    self.position += 1
    batch = {"returns": self.returns[rows], "query": self.query[rows],
             "query_mask": self.query_mask[rows], "prompt": self.prompt[rows],
             "prompt_mask": self.prompt_mask[rows]}
    return sharding.shard_batch(batch, self.mesh) if self.mesh is not None else batch

  def __iter__(self):
    return self

  def __next__(self):
    return self.next()
