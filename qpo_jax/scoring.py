"""Mean NLL of answer options after a shared prefix, batched and jitted.

Classification and multiple choice pick the option with the lowest mean token
NLL under the target. The expensive part, the (query, prompt) prefix, runs
once per row into the KV cache; the cache is then fanned out to the K options,
which are scored in one pass. The vocabulary projection is computed only at
the positions that predict an option token. Prefix and option lengths and the
batch are padded to buckets, so XLA compiles a handful of shapes however the
texts vary.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qpo_jax.decoding import bucket, last_real_index, pad_batch
from qpo_jax.models.config import ModelConfig
from qpo_jax.models.transformer import Transformer, init_cache
from qpo_jax.sharding import batch_multiple, shard_batch


@functools.partial(jax.jit, static_argnames=("cfg",))
def option_nll(cfg: ModelConfig, params, prefix: jax.Array, prefix_mask: jax.Array,
               options: jax.Array, option_mask: jax.Array) -> jax.Array:
  """Mean NLL of each option given its row's prefix.

  Args:
    prefix, prefix_mask: [B, T] ids and mask (any padding side).
    options, option_mask: [B, K, L] option ids, right-padded; row b's options
      may differ from row c's (multiple choice) or be the same (verbalizers).

  Returns:
    [B, K] float32 mean NLL over each option's real tokens (inf for an empty option).
  """
  model = Transformer(cfg)
  variables = {"params": params}
  b, t = prefix.shape
  k, length = options.shape[1:]
  cache = init_cache(cfg, b, t + length)
  hidden, cache = model.apply(variables, prefix, prefix_mask, cache=cache)
  first = hidden[jnp.arange(b), last_real_index(prefix_mask)]  # predicts option token 0
  fan = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  row b -> rows b*K .. b*K+K-1
  cache = {name: (jnp.repeat(v, k, axis=1) if name in ("k", "v") else
                  v if name == "index" else fan(v)) for name, v in cache.items()}
  flat_ids = options.reshape(b * k, length)
  flat_mask = option_mask.reshape(b * k, length)
  # Option token j is predicted by the hidden state of option token j-1.
  opt_hidden, _ = model.apply(variables, flat_ids[:, :-1], flat_mask[:, :-1], cache=cache)
  pred = jnp.concatenate([fan(first)[:, None], opt_hidden], axis=1)  # [B*K, L, D]
  logits = model.apply(variables, pred, method=model.logits)
  logp = jax.nn.log_softmax(logits, axis=-1)
  token_lp = jnp.take_along_axis(logp, flat_ids[..., None], axis=-1)[..., 0]
  count = flat_mask.sum(axis=1)
  nll = -(token_lp * flat_mask).sum(axis=1) / jnp.maximum(count, 1)
  return jnp.where(count > 0, nll, jnp.inf).reshape(b, k)


@functools.partial(jax.jit, static_argnames=("cfg",))
def token_logprobs(cfg: ModelConfig, params, tokens: jax.Array, input_mask: jax.Array) -> jax.Array:
  """[B, T] log p(token t | tokens < t) (0 at t = 0 and at padding); right padding."""
  model = Transformer(cfg)
  hidden, _ = model.apply({"params": params}, tokens, input_mask)
  logits = model.apply({"params": params}, hidden[:, :-1], method=model.logits)
  logp = jax.nn.log_softmax(logits, axis=-1)
  lp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  lp = jnp.where(input_mask[:, 1:] & input_mask[:, :-1], lp, 0.0)
  return jnp.concatenate([jnp.zeros_like(lp[:, :1]), lp], axis=1)


def _place(arrays, mesh):
  return shard_batch(arrays, mesh) if mesh is not None else jax.tree_util.tree_map(jnp.asarray,
                                                                                   arrays)


def sequence_logprobs(lm, seqs: Sequence[Sequence[int]], *, batch_size: int = 8,
                      length_multiple: int = 32, mesh=None) -> list[np.ndarray]:
  """Per-token log-probabilities of whole sequences (entry 0 of each is 0)."""
  rows = bucket(batch_size, batch_multiple(mesh)) if mesh is not None else batch_size
  out = []
  for start in range(0, len(seqs), rows):
    chunk = seqs[start:start + rows]
    ids, mask = pad_batch(chunk, 0, side="right", multiple=length_multiple, rows=rows)
    lp = np.asarray(token_logprobs(lm.cfg, lm.params, *_place((ids, mask), mesh)))
    out += [lp[i, :len(s)] for i, s in enumerate(chunk)]
  return out


def score(lm, prefixes: Sequence[Sequence[int]], options: Sequence[Sequence[Sequence[int]]], *,
          batch_size: int = 8, length_multiple: int = 32, option_multiple: int = 4,
          mesh=None) -> np.ndarray:
  """Host wrapper: token lists in, [N, K] mean NLLs out, in fixed-size bucketed batches.

  `options[i]` is row i's list of K option token lists (K equal for all rows).
  With a mesh, the batch is padded to split over its data axes and `lm.params`
  should already be placed on it (sharding.shard_params).
  """
  if mesh is not None:
    batch_size = bucket(batch_size, batch_multiple(mesh))
  if len(prefixes) != len(options):
    raise ValueError(f"{len(prefixes)} prefixes but {len(options)} option lists")
  k = len(options[0])
  if any(len(o) != k for o in options):
    raise ValueError("every row must have the same number of options")
  pad_id = 0
  out = np.zeros((len(prefixes), k), np.float32)
  for start in range(0, len(prefixes), batch_size):
    rows = range(start, min(start + batch_size, len(prefixes)))
    ids, mask = pad_batch([prefixes[i] for i in rows], pad_id, side="left",
                          multiple=length_multiple, rows=batch_size)
    opt_len = bucket(max(len(o) for i in rows for o in options[i]), option_multiple)
    opt_ids = np.full((batch_size, k, opt_len), pad_id, np.int32)
    opt_mask = np.zeros((batch_size, k, opt_len), bool)
    for r, i in enumerate(rows):
      for j, o in enumerate(options[i]):
        opt_ids[r, j, :len(o)], opt_mask[r, j, :len(o)] = o, True
    nll = option_nll(lm.cfg, lm.params, *_place((ids, mask, opt_ids, opt_mask), mesh))
    out[start:start + len(rows)] = np.asarray(nll)[:len(rows)]
  return out
