"""Mean NLL of answer options after a shared prefix, batched and jitted.

Classification and multiple choice pick the option with the lowest mean token
NLL under the target. The expensive part, the (query, prompt) prefix, runs
once per row into the KV cache; the K options then run in one pass as
independent branches of that cache (each sees the prefix and its own earlier
tokens), so the cache is never copied per option. The vocabulary projection
is computed only at the positions that predict an option token. Prefix and option lengths and the
batch are padded to buckets, so XLA compiles a handful of shapes however the
texts vary.

Prefix sharing (the idea of vLLM's automatic prefix caching): a batch's
longest common token prefix (the chat header, and the instruction when a
prompt is evaluated on many queries) runs once, its KV cache is broadcast to
every row, and only each row's own remainder runs per row. Positions and the
attention mask are those of the full sequence, so the NLLs equal the unshared
computation. Rows are batched in the order given: callers put rows with a
common beginning next to each other, shortest first (evaluation.py orders
calls by instruction, then length), which also keeps padding small.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from qpo_jax.decoding import bucket, last_real_index, pad_batch
from qpo_jax.models.config import ModelConfig
from qpo_jax.models.transformer import Transformer, init_cache
from qpo_jax.sharding import batch_multiple, shard_batch


@functools.partial(jax.jit, static_argnames=("cfg",))
def option_nll(cfg: ModelConfig, params, prefix: jax.Array, prefix_mask: jax.Array,
               options: jax.Array, option_mask: jax.Array, shared: jax.Array | None = None,
               shared_mask: jax.Array | None = None) -> jax.Array:
  """Mean NLL of each option given its row's prefix.

  Args:
    prefix, prefix_mask: [B, T] ids and mask (any padding side).
    options, option_mask: [B, K, L] option ids, right-padded; row b's options
      may differ from row c's (multiple choice) or be the same (verbalizers).
    shared, shared_mask: optional [1, S] tokens that precede every row's
      prefix; they run once and their KV cache is broadcast to the B rows.

  Returns:
    [B, K] float32 mean NLL over each option's real tokens (inf for an empty option).
  """
  model = Transformer(cfg)
  variables = {"params": params}
  b, t = prefix.shape
  k, length = options.shape[1:]
  slots = t + k * (length - 1)
  if shared is None:
    cache = init_cache(cfg, b, slots)
  else:
    one = init_cache(cfg, 1, shared.shape[1] + slots)
    _, one = model.apply(variables, shared, shared_mask, cache=one)
    cache = {name: (jnp.broadcast_to(v, (v.shape[0], b, *v.shape[2:])) if name in ("k", "v")
                    else v if name == "index" else jnp.broadcast_to(v, (b, *v.shape[1:])))
             for name, v in one.items()}
  hidden, cache = model.apply(variables, prefix, prefix_mask, cache=cache)
  first = hidden[jnp.arange(b), last_real_index(prefix_mask)]  # predicts option token 0
  pred = jnp.broadcast_to(first[:, None, None], (b, k, 1, first.shape[-1]))
  if length > 1:  # option token j is predicted by the hidden state of option token j-1
    ids = options[:, :, :-1].reshape(b, k * (length - 1))
    branch = jnp.broadcast_to(jnp.repeat(jnp.arange(1, k + 1), length - 1), ids.shape)
    opt_hidden, _ = model.apply(variables, ids, option_mask[:, :, :-1].reshape(ids.shape),
                                cache=cache, branches=branch)
    pred = jnp.concatenate([pred, opt_hidden.reshape(b, k, length - 1, -1)], axis=2)
  logits = model.apply(variables, pred, method=model.logits)  # [B, K, L, V]
  logp = jax.nn.log_softmax(logits, axis=-1)
  token_lp = jnp.take_along_axis(logp, options[..., None], axis=-1)[..., 0]
  count = option_mask.sum(axis=-1)
  nll = -(token_lp * option_mask).sum(axis=-1) / jnp.maximum(count, 1)
  return jnp.where(count > 0, nll, jnp.inf)


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


def _replicate(arrays, mesh):
  if mesh is None:
    return jax.tree_util.tree_map(jnp.asarray, arrays)
  return jax.device_put(arrays, NamedSharding(mesh, PartitionSpec()))


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
  """Tokens every sequence starts with, leaving each at least one token of its own."""
  limit = min(len(s) for s in seqs) - 1
  first = seqs[0]
  for i in range(max(limit, 0)):
    if any(s[i] != first[i] for s in seqs[1:]):
      return i
  return max(limit, 0)


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
          batch_size: int = 8, length_multiple: int = 32, option_multiple: int = 2,
          mesh=None, min_shared: int = 8) -> np.ndarray:
  """Host wrapper: token lists in, [N, K] mean NLLs out, in fixed-size bucketed batches.

  `options[i]` is row i's list of K option token lists (K equal for all rows).
  A batch whose rows share at least `min_shared` leading tokens runs them once
  (module docstring; `min_shared=0` turns sharing off). With a mesh,
  the batch is padded to split over its data axes and `lm.params` should
  already be placed on it (sharding.shard_params).
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
    rows = list(range(start, min(start + batch_size, len(prefixes))))
    shared = common_prefix_length([prefixes[i] for i in rows]) if min_shared else 0
    extra = {}
    if min_shared and shared >= min_shared:
      sh_ids, sh_mask = pad_batch([prefixes[rows[0]][:shared]], pad_id, side="left",
                                  multiple=length_multiple)
      extra = dict(zip(("shared", "shared_mask"), _replicate((sh_ids, sh_mask), mesh)))
    else:
      shared = 0
    ids, mask = pad_batch([prefixes[i][shared:] for i in rows], pad_id, side="left",
                          multiple=length_multiple, rows=batch_size)
    opt_len = bucket(max(len(o) for i in rows for o in options[i]), option_multiple)
    opt_ids = np.full((batch_size, k, opt_len), pad_id, np.int32)
    opt_mask = np.zeros((batch_size, k, opt_len), bool)
    for r, i in enumerate(rows):
      for j, o in enumerate(options[i]):
        opt_ids[r, j, :len(o)], opt_mask[r, j, :len(o)] = o, True
    nll = option_nll(lm.cfg, lm.params, *_place((ids, mask, opt_ids, opt_mask), mesh), **extra)
    out[rows] = np.asarray(nll)[:len(rows)]
  return out
