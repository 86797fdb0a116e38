"""What a policy round trains on, read so that each process holds only what it places.

Batching (batches.Batches) needs three facts of every training record: its
return and how many query and prompt tokens it keeps (the round also reports how
many queries `query_len` cut: each row's whole query length). The epoch's permutation,
the length-sorted batches and each batch's padded width follow from them, the
same on every process. Token ids are needed only for the rows a process places
on its own devices.

So `from_dataset` has each process read and tokenise only its share of the
dataset's records (random access into the TFRecord shards), compute those facts
and the expert filter's keys (a hash of the query and of the prompt, and the raw
reward), and gather them; every process then applies the filter to the same
keys. Afterwards a batch's rows are read and tokenised by the processes whose
devices hold them, and kept for later epochs. Each shard's sha256 is checked by
one process. With one process this reads and tokenises every record once, as a
whole-dataset read would. `from_records` serves records already in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Sequence

import numpy as np

from qpo_jax import distributed, rewards
from qpo_jax.store.dataset import RecordIndex
from qpo_jax.tokens import padded, token_ids, tokenize
from qpo_jax.store.records import Record

TOKEN_FIELDS = ("query", "query_mask", "prompt", "prompt_mask")


@dataclasses.dataclass(frozen=True)
class TrainingRows:
  """Every training row's return and kept token counts, and its token ids on demand.

  `load(rows)` returns the rows' [len(rows), query_len | prompt_len] ids and masks
  (TOKEN_FIELDS); the prompt ends in EOS. Rows are numbered 0..len-1.
  """

  returns: np.ndarray  # [N] float32, normalised when the round asks
  query_lengths: np.ndarray  # [N] query tokens kept (<= query_len)
  prompt_lengths: np.ndarray  # [N] prompt tokens kept, EOS included (<= prompt_len)
  query_tokens: np.ndarray  # [N] the whole query's tokens (> query_len: the query was cut)
  query_len: int
  prompt_len: int
  load: Callable[[np.ndarray], dict[str, np.ndarray]]

  def __len__(self) -> int:
    return len(self.returns)

  def cut_queries(self) -> float:
    """The share of rows whose query is longer than `query_len` (the policy sees its start)."""
    return float(np.mean(self.query_tokens > self.query_len)) if len(self) else 0.0


def _tokens(recs: Sequence[Record], tokenizer, query_len: int, prompt_len: int
            ) -> dict[str, np.ndarray]:
  queries = token_ids(tokenizer, [r.query for r in recs])  # once: cut below, counted whole
  q, qm = padded(tokenizer, queries, query_len, False)
  p, pm = tokenize(tokenizer, [r.prompt for r in recs], prompt_len, True)
  return {"query": q, "query_mask": qm, "prompt": p, "prompt_mask": pm,
          "query_tokens": np.asarray([len(t) for t in queries], np.int64)}


def from_records(recs: Sequence[Record], tokenizer, *, query_len: int, prompt_len: int,
                 normalizer: rewards.Normalizer | None = None) -> TrainingRows:
  """Rows of records in memory, all tokenised now."""
  tokens = _tokens(recs, tokenizer, query_len, prompt_len)
  returns = np.asarray([r.reward for r in recs], np.float32)
  if normalizer is not None:
    returns = normalizer(returns).astype(np.float32)
  return TrainingRows(returns, tokens["query_mask"].sum(1), tokens["prompt_mask"].sum(1),
                      tokens["query_tokens"], query_len, prompt_len,
                      lambda rows: {k: tokens[k][rows] for k in TOKEN_FIELDS})


@dataclasses.dataclass(frozen=True)
class _FilterKeys:
  """What the expert filter reads of a record (rewards.expert_filter), texts as hashes."""

  index: int
  query_id: str
  prompt: str
  reward: float
  query: str = ""


def _digest(text: str) -> str:
  return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class _DatasetTokens:
  """Token ids of a dataset's records, read and tokenised the first time they are asked for."""

  def __init__(self, index: RecordIndex, tokenizer, query_len: int, prompt_len: int):
    self.index, self.tokenizer = index, tokenizer
    self.query_len, self.prompt_len = query_len, prompt_len
    self._rows: dict[int, tuple[np.ndarray, ...]] = {}

  def add(self, indices: Sequence[int], recs: Sequence[Record]) -> dict[str, np.ndarray]:
    """Tokenises records read by the caller (`indices` are their places); returns the ids."""
    tokens = _tokens(recs, self.tokenizer, self.query_len, self.prompt_len)
    for j, i in enumerate(indices):
      self._rows[i] = tuple(tokens[k][j] for k in TOKEN_FIELDS)
    return tokens

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    new = sorted({int(i) for i in indices} - self._rows.keys())
    if new:
      self.add(new, self.index.read(new))
    rows = [self._rows[int(i)] for i in indices]
    return {k: np.stack([r[j] for r in rows]) for j, k in enumerate(TOKEN_FIELDS)}


def from_dataset(directory: str, tokenizer, *, query_len: int, prompt_len: int,
                 normalize: bool = False, threshold: float | None = None,
                 top_fraction: float | None = None, rank_by: str = "reward",
                 returns: str = "reward", rows_per_query: int = 0, seed: int = 0
                 ) -> tuple[TrainingRows, dict[str, Any]]:
  """The expert rows of a finished dataset (module docstring), and its manifest.

  The filter is `rewards.expert_filter(threshold, top_fraction, rank_by)`, then
  `rewards.per_query_sample(rows_per_query, seed)`; with `normalize` the returns are
  mapped by the manifest's stored normaliser; `returns="query_centred"` centres them
  on each query's mean over all the dataset's records (`rewards.query_centred`).
  """
  if returns not in rewards.RETURNS:
    raise ValueError(f"offline.returns={returns!r} must be one of {rewards.RETURNS}")
  index = RecordIndex(directory)
  tokens = _DatasetTokens(index, tokenizer, query_len, prompt_len)

  def read_share() -> list[list[Any]]:
    mine = list(distributed.share(len(index)))
    shards = distributed.share(len(index.manifest["shards"]))
    index.verify_shards(shards)
    recs = index.read(mine)
    got = tokens.add(mine, recs)
    return [[_digest(r.query_id or r.query), _digest(r.prompt), r.reward, int(q), int(p), int(n)]
            for r, q, p, n in zip(recs, got["query_mask"].sum(1), got["prompt_mask"].sum(1),
                                  got["query_tokens"])]

  facts = distributed.allgather(distributed.agree(read_share))
  keys = [_FilterKeys(i, q, p, reward) for i, (q, p, reward, *_) in enumerate(facts)]
  expert = rewards.expert_filter(keys, threshold, top_fraction, rank_by)
  kept = np.asarray([k.index for k in rewards.per_query_sample(expert, rows_per_query, seed)],
                    np.int64)
  values = np.asarray([f[2] for f in facts], np.float32)  # as stored, then normalised
  stored = index.manifest.get("normalizer")
  if normalize and stored:
    values = np.asarray(rewards.Normalizer.from_dict(stored)(values))
  if returns == "query_centred":
    values = rewards.query_centred([f[0] for f in facts], values)
  returns = values[kept].astype(np.float32)
  lengths = np.asarray([facts[i][3:] for i in kept], np.int64).reshape(-1, 3)
  rows = TrainingRows(returns, lengths[:, 0], lengths[:, 1], lengths[:, 2], query_len, prompt_len,
                      lambda rows: tokens(kept[rows]))
  return rows, index.manifest
