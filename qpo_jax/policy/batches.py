"""The policy's training input: tokenized (return, query, prompt) in fixed-shape batches.

Queries are cut to Lq tokens and prompts (plus EOS, so the policy learns to
stop) to Lp tokens, right-padded with masks (spec: Lq = Lp = 40); a round's
rows, their returns and token counts come from training_rows.py. The order is a
permutation per epoch drawn from (seed, epoch), so the iterator's whole state
is two integers — `state()` goes into the checkpoint, `restore()` continues
exactly where training stopped. Every batch has `batch_size` rows (the last
partial batch of an epoch is dropped), and with a mesh it is placed split over
the data axes, each process loading only the rows its devices hold.

Padding is most of a fixed [B, 1 + Lq + Lp] batch (tweets average 24 tokens
against Lq = 48), and the train step's cost is linear in it. With
`pad_multiple` > 0 each window of `window` batches of the epoch's permutation
is sorted by length and cut into batches, the batches are put back in a
seeded order, and each is padded only to its longest row rounded up to the
multiple (at most Lq / Lp): a handful of shapes, each compiled once. The
masks carry the padding, so the loss is the same for any padding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from qpo_jax import sharding

if TYPE_CHECKING:
  from qpo_jax.policy.training_rows import TrainingRows


class Batches:
  """Seeded, resumable, fixed-shape batches over a round's `TrainingRows`.

  Over several processes every process computes the same batches from the rows'
  returns and lengths, and loads (reads and tokenises) only the rows its own
  devices hold (`sharding.local_rows`).
  """

  def __init__(self, rows: TrainingRows, *, batch_size: int, seed: int, mesh=None,
               pad_multiple: int = 0, window: int = 16):
    if len(rows) < batch_size:
      raise ValueError(f"{len(rows)} records cannot fill one batch of {batch_size}; "
                       "lower the batch size")
    if mesh is not None and batch_size % sharding.batch_multiple(mesh):
      raise ValueError(f"batch size {batch_size} does not split over "
                       f"{sharding.batch_multiple(mesh)} data shards of the mesh")
    self.rows = rows
    self.batch_size, self.seed, self.mesh = batch_size, seed, mesh
    self.pad_multiple, self.window = pad_multiple, window
    self.steps_per_epoch = len(rows) // batch_size
    self.epoch, self.position = 0, 0
    self._epoch_batches: tuple[int, list[np.ndarray]] | None = None

  def state(self) -> dict[str, int]:
    return {"epoch": self.epoch, "position": self.position}

  def restore(self, state: dict[str, Any]) -> None:
    self.epoch, self.position = int(state["epoch"]), int(state["position"])

  def _batches(self, epoch: int) -> list[np.ndarray]:
    """The row indices of every batch of an epoch (a function of seed and epoch only)."""
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(len(self.rows))[:self.steps_per_epoch * self.batch_size]
    batches = np.split(order, self.steps_per_epoch)
    if not self.pad_multiple:
      return batches
    length = self.rows.query_lengths * (self.rows.prompt_len + 1) + self.rows.prompt_lengths
    out = []
    for start in range(0, len(batches), self.window):
      rows = np.concatenate(batches[start:start + self.window])
      rows = rows[np.argsort(length[rows], kind="stable")]
      out += np.split(rows, len(rows) // self.batch_size)
    return [out[i] for i in rng.permutation(len(out))]

  def _padded(self, full: int, lengths: np.ndarray) -> int:
    if not self.pad_multiple:
      return full
    return min(full, max(1, -(-int(lengths.max()) // self.pad_multiple)) * self.pad_multiple)

  def next(self) -> dict[str, Any]:
    if self.position >= self.steps_per_epoch:
      self.epoch, self.position = self.epoch + 1, 0
    if self._epoch_batches is None or self._epoch_batches[0] != self.epoch:
      self._epoch_batches = (self.epoch, self._batches(self.epoch))
    rows = self._epoch_batches[1][self.position]
    self.position += 1
    width = {"query": self._padded(self.rows.query_len, self.rows.query_lengths[rows]),
             "prompt": self._padded(self.rows.prompt_len, self.rows.prompt_lengths[rows])}
    local = sharding.local_rows(self.mesh, len(rows))
    tokens = self.rows.load(rows[local])
    batch = {"returns": self.rows.returns[rows]}
    for k, v in tokens.items():  # the rows other processes hold stay zero here
      batch[k] = np.zeros((len(rows), width[k.removesuffix("_mask")]), v.dtype)
      batch[k][local] = v[:, :batch[k].shape[1]]
    return sharding.shard_batch(batch, self.mesh) if self.mesh is not None else batch

  def __iter__(self):
    return self

  def __next__(self):
    return self.next()
