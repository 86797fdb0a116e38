"""Reward-conditioned prompt generation with a KV cache.

[R*; query] runs once into the cache; prompt tokens are then decoded one at a
time (greedy, or temperature / top-k / top-p sampling with a key per row and
step), stop at EOS, and carry the same mask as in training: a finished row
feeds pad tokens with mask False, which attention and positions ignore. (The
authors' code decodes a fixed 40 tokens and drops the mask while decoding.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qpo_jax import decoding, distributed
from qpo_jax.models.config import ModelConfig
from qpo_jax.models.transformer import init_cache
from qpo_jax.policy.model import PromptDT
from qpo_jax.policy.settings import SampleSettings
from qpo_jax.tokens import pad_id, tokenize
from qpo_jax.utils import progress_bar


@functools.partial(jax.jit, static_argnames=("cfg", "max_len", "temperature", "top_k", "top_p"))
def sample(cfg: ModelConfig, params, returns: jax.Array, query: jax.Array, query_mask: jax.Array,
           keys: jax.Array, eos_ids: jax.Array, pad_id: int | jax.Array, *, max_len: int,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0
           ) -> tuple[jax.Array, jax.Array]:
  """([B, max_len] prompt tokens, pad after EOS; [B] lengths before EOS) for [B] returns."""
  model = PromptDT(cfg)
  variables = {"params": params}
  b, lq = query.shape
  cache = init_cache(cfg, b, 1 + lq + max_len)
  hidden, cache = model.apply(variables, returns, query, query_mask, cache, method=model.prefix)
  logits = model.apply(variables, hidden, method=model.prompt_logits)

  def step_fn(tok, live, cache):
    return model.apply(variables, tok, live, cache, method=model.step)

  return decoding.decode_steps(step_fn, logits, cache, keys, eos_ids, pad_id,
                               jnp.zeros((b,), bool), max_new_tokens=max_len,
                               temperature=temperature, top_k=top_k, top_p=top_p)


def decode_prompts(cfg: ModelConfig, params, tokenizer, queries: Sequence[str], *,
                   target_return: float, query_len: int, prompt_len: int, seed: int,
                   num_samples: int = 1, batch_size: int = 16, temperature: float = 0.0,
                   top_k: int = 0, top_p: float = 1.0, first_index: int = 0) -> list[list[str]]:
  """`num_samples` prompts per query (texts), conditioned on `target_return`.

  Row keys come from (seed, query index, sample index), so a query's prompts do
  not depend on the batch it lands in; greedy decoding ignores them. The queries
  are numbered from `first_index` (a caller going through a long list in parts
  gets the same prompts as one call over all of it).
  """
  if not queries:
    return []
  rows = [(i, s) for i in range(len(queries)) for s in range(num_samples)]
  ids, mask = tokenize(tokenizer, list(queries), query_len, append_eos=False)
  pad = pad_id(tokenizer)
  eos = jnp.asarray([tokenizer.eos_token_id], jnp.int32)
  out: list[list[str]] = [[] for _ in queries]
  bar = progress_bar(total=len(rows), desc="policy prompts", unit="prompt", leave=False)
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    width = decoding.batch_rows(len(chunk), batch_size)
    index = np.array([i for i, _ in chunk] + [0] * (width - len(chunk)))
    row_ids = np.array([(first_index + i) * num_samples + s for i, s in chunk]
                       + [0] * (width - len(chunk)))
    keys = decoding.row_keys(seed, row_ids)
    tokens, lengths = sample(cfg, params, jnp.full((width,), target_return, jnp.float32),
                             jnp.asarray(ids[index]), jnp.asarray(mask[index]), keys, eos, pad,
                             max_len=prompt_len, temperature=temperature, top_k=top_k,
                             top_p=top_p)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    for r, (i, _) in enumerate(chunk):
      out[i].append(tokenizer.decode(tokens[r, :lengths[r]], skip_special_tokens=True))
    bar.update(len(chunk))
  bar.close()
  return out


@dataclasses.dataclass(frozen=True)
class PromptSampler:
  """A trained round's policy, loaded once, and the config's sampling settings."""

  cfg: Any
  params: Any
  tokenizer: Any
  sample: SampleSettings
  query_len: int
  prompt_len: int
  round: int

  def __call__(self, queries: Sequence[str], *, collect: bool, seed: int,
               num_samples: int | None = None, first_index: int = 0,
               target_return: float | None = None) -> list[list[str]]:
    """Greedy prompts (test) or the collection sampler's `num_samples` per query, at R* =
    `target_return` (default: the config's `sample.target_return`).

    Over several processes each samples its share of the queries on its own
    devices and the prompts are gathered (a query's prompts depend only on its
    index, so they are those of one process).
    """
    sc = self.sample
    knobs = dataclasses.asdict(sc.collect if collect else sc.test)
    n = (num_samples or sc.num_samples) if collect else 1
    mine = distributed.share(len(queries))
    local = decode_prompts(
        self.cfg, self.params, self.tokenizer, list(queries)[mine.start:mine.stop],
        target_return=sc.target_return if target_return is None else target_return,
        query_len=self.query_len, prompt_len=self.prompt_len,
        seed=seed, num_samples=n, batch_size=sc.batch_size, first_index=first_index + mine.start,
        **knobs)
    return distributed.allgather(local)
