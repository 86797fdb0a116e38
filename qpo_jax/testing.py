"""Reference computations and random inputs shared by the tests and the benchmarks.

Kept in the package (not in tests/) so `experiments/` times exactly the batches the
tests check, and so there is one slow-but-obvious NLL that the fast paths are held to.
"""

from __future__ import annotations

import functools
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
  """Mean NLL of `option`'s tokens after `prefix`: one full forward of one sequence, no
  cache, no batching, no attention mask (what scoring and evaluation must equal).

  The sequence is followed by filler tokens up to a multiple of 64 (at most the model's
  length), so that a test's many lengths compile a few programs, not one each: a causal
  model's logits at a position do not depend on the tokens after it.
  """
  seq = list(prefix) + list(option)
  width = min(-(-len(seq) // 64) * 64, max(lm.cfg.max_len, len(seq)))
  ids = np.zeros((1, width), np.int32)
  ids[0, :len(seq)] = seq
  logp = np.asarray(_log_probs(lm.cfg, lm.params, jnp.asarray(ids))[0, :len(seq)])
  n = len(prefix)
  return float(-np.mean([logp[n - 1 + j, t] for j, t in enumerate(option)]))


@functools.partial(jax.jit, static_argnums=0)
def _log_probs(cfg, params, ids):
  logits = Transformer(cfg).apply({"params": params}, ids, jnp.ones(ids.shape, bool),
                                  method=Transformer.lm)
  return jax.nn.log_softmax(logits.astype(jnp.float32))
