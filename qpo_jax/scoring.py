"""Mean NLL of answer options after a shared prefix, batched and jitted.

Classification and multiple choice pick the option with the lowest mean token
NLL under the target. One model pass per batch computes it: the row's
prefix is the trunk and each of the K options (but its last token) is an
independent branch after it, seeing the prefix and its own earlier tokens
(transformer.py's `branches`), so the K options cost K short branches and no
extra pass. The vocabulary projection is computed only at the positions that
predict an option token. Prefix and option lengths and the batch are padded to
buckets, so XLA compiles a handful of shapes however the texts vary.

Prefix sharing (the idea of vLLM's automatic prefix caching): a batch's
longest common token prefix (the chat header, and the instruction when a
prompt is evaluated on many queries) runs once into a KV cache
(`prefix_cache`), which every row starts from; the following batches reuse
that cache while it still begins all their rows, so an instruction scored on
400 queries runs once, not once per batch. Positions and the attention mask
are those of the full sequence, so the NLLs equal the unshared computation.
Rows are batched in `batch_order`: rows with a common beginning together,
shortest first by token count (not characters: less padding) within each
group, whatever order the caller used.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qpo_jax.distributed import to_host
from qpo_jax.decoding import bucket, last_real_index, pad_batch
from qpo_jax.models.config import ModelConfig
from qpo_jax.models.transformer import Cache, Transformer, init_cache
from qpo_jax.sharding import batch_multiple, replicate, shard_batch


@functools.partial(jax.jit, static_argnames=("cfg",))
def prefix_cache(cfg: ModelConfig, params, shared: jax.Array, shared_mask: jax.Array) -> Cache:
  """KV cache of [1, S] tokens that begin every row of one or more batches."""
  cache = init_cache(cfg, 1, shared.shape[1])
  return Transformer(cfg).apply({"params": params}, shared, shared_mask, cache=cache)[1]


def _extend(cfg: ModelConfig, shared: Cache | None, b: int, slots: int) -> Cache:
  """A [B, S + slots] cache whose first S slots are `shared` (broadcast), or an empty one."""
  empty = init_cache(cfg, b, slots)
  if shared is None:
    return empty
  rows = lambda v: jnp.broadcast_to(v, (v.shape[0], b, *v.shape[2:]))
  return {"k": jnp.concatenate([rows(shared["k"]), empty["k"]], axis=2),
          "v": jnp.concatenate([rows(shared["v"]), empty["v"]], axis=2),
          "mask": jnp.concatenate([jnp.broadcast_to(shared["mask"], (b, shared["mask"].shape[1])),
                                   empty["mask"]], axis=1),
          "index": shared["index"], "pos": jnp.broadcast_to(shared["pos"], (b,))}


@functools.partial(jax.jit, static_argnames=("cfg",))
def option_nll(cfg: ModelConfig, params, prefix: jax.Array, prefix_mask: jax.Array,
               options: jax.Array, option_mask: jax.Array,
               shared: Cache | None = None) -> jax.Array:
  """Mean NLL of each option given its row's prefix.

  Args:
    prefix, prefix_mask: [B, T] ids and mask (any padding side).
    options, option_mask: [B, K, L] option ids, right-padded; row b's options
      may differ from row c's (multiple choice) or be the same (verbalizers).
    shared: optional `prefix_cache` of tokens that precede every row's prefix.

  Returns:
    [B, K] float32 mean NLL over each option's real tokens (inf for an empty option).
  """
  model = Transformer(cfg)
  variables = {"params": params}
  b, t = prefix.shape
  k, length = options.shape[1:]
  # One pass: the prefix is the trunk (branch 0) and option k's tokens but the last form
  # branch k + 1; option token j is predicted by the hidden state of token j - 1.
  opt_ids = options[:, :, :-1].reshape(b, k * (length - 1))
  ids = jnp.concatenate([prefix, opt_ids], axis=1)
  mask = jnp.concatenate([prefix_mask, option_mask[:, :, :-1].reshape(opt_ids.shape)], axis=1)
  branch = jnp.concatenate([jnp.zeros((b, t), jnp.int32), jnp.broadcast_to(
      jnp.repeat(jnp.arange(1, k + 1, dtype=jnp.int32), length - 1), opt_ids.shape)], axis=1)
  hidden, _ = model.apply(variables, ids, mask, cache=_extend(cfg, shared, b, ids.shape[1]),
                          branches=branch)
  first = hidden[jnp.arange(b), last_real_index(prefix_mask)]  # predicts option token 0
  pred = jnp.broadcast_to(first[:, None, None], (b, k, 1, first.shape[-1]))
  if length > 1:
    pred = jnp.concatenate([pred, hidden[:, t:].reshape(b, k, length - 1, -1)], axis=2)
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


@functools.partial(jax.jit, static_argnames=("cfg",))
def branched_logprobs(cfg: ModelConfig, params, tokens: jax.Array, input_mask: jax.Array,
                      branches: jax.Array, before: jax.Array):
  """One row of a trunk and branches (transformer.py): [T] log p of each token given the
  token at `before` (its predecessor; -1: none, 0 given), and [T] greedy next token and its
  log p after each position."""
  model = Transformer(cfg)
  variables = {"params": params}
  hidden, _ = model.apply(variables, tokens[None], input_mask[None],
                          cache=init_cache(cfg, 1, tokens.shape[0]), branches=branches[None])
  logp = jax.nn.log_softmax(model.apply(variables, hidden[0], method=model.logits), axis=-1)
  lp = logp[jnp.maximum(before, 0), tokens]
  return jnp.where(before >= 0, lp, 0.0), jnp.argmax(logp, axis=-1), jnp.max(logp, axis=-1)


def shared_prefix_logprobs(lm, seqs: Sequence[Sequence[int]], length_multiple: int = 32
                           ) -> tuple[list[np.ndarray], list[int], list[float]]:
  """`sequence_logprobs` of a few sequences, with each one's greedy next token and its log p,
  in one pass whose common beginning runs once (the trunk; the rest of each sequence is a
  branch): K answer options after one prompt cost the prompt once, not K times. Every
  sequence has a token at least."""
  c = common_prefix_length(seqs)
  ids, branch, before, spans = list(seqs[0][:c]), [0] * c, list(range(-1, c - 1)), []
  for k, s in enumerate(seqs):
    start = len(ids)
    ids += s[c:]
    branch += [k + 1] * (len(s) - c)
    before += [c - 1] + list(range(start, len(ids) - 1))
    spans.append((start, len(ids)))
  n = len(ids)
  t = -(-n // length_multiple) * length_multiple
  pad = lambda v, fill: np.asarray(v + [fill] * (t - n), np.int32)  # noqa: E731
  lp, nxt, nxt_lp = (np.asarray(x) for x in branched_logprobs(
      lm.cfg, lm.params, pad(ids, 0), np.arange(t) < n, pad(branch, 0), pad(before, -1)))
  out = [np.concatenate([lp[:c], lp[a:b]]).astype(np.float32) for a, b in spans]
  return out, [int(nxt[b - 1]) for _, b in spans], [float(nxt_lp[b - 1]) for _, b in spans]


def _place(arrays, mesh):
  return shard_batch(arrays, mesh) if mesh is not None else jax.tree_util.tree_map(jnp.asarray,
                                                                                   arrays)


def _replicate(arrays, mesh):
  if mesh is None:
    return jax.tree_util.tree_map(jnp.asarray, arrays)
  return replicate(arrays, mesh)


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
  """Tokens every sequence starts with, leaving each at least one token of its own."""
  limit = min(len(s) for s in seqs) - 1
  first = seqs[0]
  for i in range(max(limit, 0)):
    if any(s[i] != first[i] for s in seqs[1:]):
      return i
  return max(limit, 0)


def batch_order(prefixes: Sequence[Sequence[int]], batch_size: int) -> list[int]:
  """Row order for batching: groups of rows with a common beginning, each shortest first.

  A row's group is the longest beginning it shares with at least `batch_size - 1`
  other rows (found on the lexicographically sorted rows, where such rows are
  neighbours): a chat header and an instruction over many queries, or a
  frequent first word after them. Rows are sorted by (group, length), so a
  batch's rows share their group's beginning (computed once: `score`) and
  have similar lengths (little padding); a group that begins another (the
  instruction before "@user") comes right before it, so its cache serves both.
  """
  n = len(prefixes)
  lex = sorted(range(n), key=lambda i: prefixes[i])
  adjacent = [0] + [common_prefix_length([prefixes[a], prefixes[b]]) for a, b in zip(lex, lex[1:])]
  span = min(batch_size, n) - 1  # neighbours a window of batch_size rows has
  if span <= 0:  # one row per batch (or none): nothing to share
    depth = [len(prefixes[i]) for i in lex]
  else:
    depth = [0] * n
    for start in range(n - span):  # window lex[start .. start + span]
      shared = min(adjacent[start + 1:start + span + 1])
      for j in range(start, start + span + 1):
        depth[j] = max(depth[j], shared)
  keys = {i: (tuple(prefixes[i][:d]), len(prefixes[i])) for i, d in zip(lex, depth)}
  return sorted(range(n), key=keys.__getitem__)


def sequence_logprobs(lm, seqs: Sequence[Sequence[int]], *, batch_size: int = 8,
                      length_multiple: int = 32, mesh=None) -> list[np.ndarray]:
  """Per-token log-probabilities of whole sequences (entry 0 of each is 0)."""
  rows = bucket(batch_size, batch_multiple(mesh)) if mesh is not None else batch_size
  out = []
  for start in range(0, len(seqs), rows):
    chunk = seqs[start:start + rows]
    ids, mask = pad_batch(chunk, 0, side="right", multiple=length_multiple, rows=rows)
    lp = to_host(token_logprobs(lm.cfg, lm.params, *_place((ids, mask), mesh)))
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
  memo: tuple[tuple[int, ...], Cache] | None = None  # the last shared prefix and its cache
  order = batch_order(prefixes, batch_size)
  for start in range(0, len(prefixes), batch_size):
    rows = order[start:start + batch_size]
    shared = common_prefix_length([prefixes[i] for i in rows]) if min_shared else 0
    if memo and len(memo[0]) <= shared and tuple(prefixes[rows[0]][:len(memo[0])]) == memo[0]:
      shared = len(memo[0])  # the previous batch's shared tokens begin this batch too
    elif shared >= min_shared > 0:
      sh_ids, sh_mask = pad_batch([prefixes[rows[0]][:shared]], pad_id, side="left",
                                  multiple=length_multiple)
      memo = (tuple(prefixes[rows[0]][:shared]),
              prefix_cache(lm.cfg, lm.params, *_replicate((sh_ids, sh_mask), mesh)))
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
    nll = option_nll(lm.cfg, lm.params, *_place((ids, mask, opt_ids, opt_mask), mesh),
                     shared=memo[1] if shared else None)
    out[rows] = to_host(nll)[:len(rows)]
  return out
