"""Reference computations and random inputs shared by the tests and the benchmarks.

Kept in the package (not in tests/) so `experiments/` times exactly the batches the
tests check, and so there is one slow-but-obvious NLL that the fast paths are held to.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qpo_jax.models.transformer import Transformer


def policy_batch(b: int, lq: int, lp: int, *, vocab: int = 500, seed: int = 0,
                 shortest: float = 0.0, max_return: float = 100.0) -> dict[str, np.ndarray]:
  """A random policy training batch (the train step's BATCH_KEYS) with ragged masks: each
  row keeps a random length between `shortest` of the width (at least one token) and all."""
  rng = np.random.default_rng(seed)

  def mask(length: int) -> np.ndarray:
    lo = max(1, int(length * shortest))
    return np.arange(length)[None] < rng.integers(lo, length + 1, (b, 1))

  returns = rng.uniform(0, max_return, b).astype(np.float32)
  query = rng.integers(3, vocab, (b, lq)).astype(np.int32)
  query_mask = mask(lq)
  prompt = rng.integers(3, vocab, (b, lp)).astype(np.int32)
  return {"returns": returns, "query": query, "query_mask": query_mask, "prompt": prompt,
          "prompt_mask": mask(lp)}


def naive_option_nll(lm: Any, prefix: Sequence[int], option: Sequence[int]) -> float:
  """Mean NLL of `option`'s tokens after `prefix`: one full forward of one unpadded
  sequence, no cache, no batching (what scoring and evaluation must equal)."""
  seq = np.array([list(prefix) + list(option)])
  logits = Transformer(lm.cfg).apply({"params": lm.params}, jnp.asarray(seq),
                                     jnp.ones(seq.shape, bool), method=Transformer.lm)
  logp = np.asarray(jax.nn.log_softmax(logits[0]))
  n = len(prefix)
  return float(-np.mean([logp[n - 1 + j, t] for j, t in enumerate(option)]))
