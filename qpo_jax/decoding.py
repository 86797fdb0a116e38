"""Batched autoregressive decoding with the KV cache: greedy, temperature, top-k, top-p.

Prompts may be padded on either side: the prefill uses the same input mask as
training, and each row continues from its own last real token. Decoding stops
per row at an EOS id and for the batch once every row stopped. Randomness is
per row (`row_keys[b]` folded with the step), so a row's sample depends on its
own key only, not on its batch position or the padding around it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qpo_jax import sharding
from qpo_jax.distributed import to_host
from qpo_jax.models.config import ModelConfig
from qpo_jax.models.transformer import Transformer, init_cache
from qpo_jax.tokens import chat_prompt, pad_id


def nucleus(logits: jax.Array, top_p: float) -> jax.Array:
  """Logits with tokens outside the smallest set holding `top_p` of the mass set to -inf."""
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
  cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample_token(logits, row_keys, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
  """One token per row of `logits` [B, V], drawn with that row's key.

  With top-k the draw (and the nucleus sort) runs over the k candidates only,
  not the whole vocabulary: the loop's top-k 2 / top-p 0.9 costs about what
  greedy decoding does.
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  ids = None
  if top_k > 0:
    logits, ids = jax.lax.top_k(logits, top_k)
  if top_p < 1.0:
    logits = nucleus(logits, top_p)
  choice = jax.vmap(jax.random.categorical)(row_keys, logits)
  if ids is not None:
    choice = jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]
  return choice.astype(jnp.int32)


def row_keys(seed: int, row_ids) -> jax.Array:
  """One key per row from a seed and stable row ids (e.g. query indices)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(row_ids, jnp.uint32))


def last_real_index(input_mask: jax.Array) -> jax.Array:
  """Index of the last True per row (right or left padding alike)."""
  t = input_mask.shape[1]
  return t - 1 - jnp.argmax(input_mask[:, ::-1], axis=1)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "temperature", "top_k",
                                             "top_p"))
def generate(cfg: ModelConfig, params, tokens: jax.Array, input_mask: jax.Array,
             keys: jax.Array, eos_ids: jax.Array, pad_id: int | jax.Array, *,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Continues each row of `tokens`; `keys` [B] are the rows' sampling keys.

  Returns:
    (new tokens [B, max_new_tokens] with pad after a row's EOS, number of
     tokens before the EOS (or max_new_tokens) per row).
  """
  model = Transformer(cfg)
  variables = {"params": params}
  b, t = tokens.shape
  cache = init_cache(cfg, b, t + max_new_tokens)
  hidden, cache = model.apply(variables, tokens, input_mask, cache=cache)
  last = hidden[jnp.arange(b), last_real_index(input_mask)]
  logits = model.apply(variables, last, method=model.logits)

  def step_fn(tok, live, cache):
    hidden, cache = model.apply(variables, tok[:, None], live[:, None], cache=cache)
    return model.apply(variables, hidden[:, 0], method=model.logits), cache

  empty = ~jnp.any(input_mask, axis=1)  # filler rows: done before they start
  return decode_steps(step_fn, logits, cache, keys, eos_ids, pad_id, empty,
                      max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                      top_p=top_p)


def decode_steps(step_fn: Callable, logits: jax.Array, cache: Any, keys: jax.Array,
                 eos_ids: jax.Array, pad_id: int | jax.Array, done: jax.Array, *,
                 max_new_tokens: int, temperature: float, top_k: int, top_p: float
                 ) -> tuple[jax.Array, jax.Array]:
  """The one KV-cached decode loop (the target LM's and the policy's), inside jit.

  From the logits after a prefill, each step samples a token per row (key: the
  row's key folded with the step), and `step_fn(tokens [B], live [B], cache) ->
  (logits [B, V], cache)` feeds it back; a row that said EOS is done and feeds
  pad tokens with mask False from then on. Stops after `max_new_tokens` or when
  every row is done. Returns ([B, max_new_tokens] tokens with pad after EOS,
  [B] tokens before the EOS).
  """
  b = logits.shape[0]

  def cond(state):
    return (state[0] < max_new_tokens) & ~jnp.all(state[1])

  def body(state):
    step, done, logits, cache, out, lengths = state
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    tok = sample_token(logits, step_keys, temperature, top_k, top_p)
    is_eos = jnp.isin(tok, eos_ids)
    live = ~done & ~is_eos
    tok = jnp.where(live, tok, pad_id)
    out = out.at[:, step].set(tok)
    logits, cache = step_fn(tok, live, cache)
    return step + 1, done | is_eos, logits, cache, out, lengths + live

  out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
  state = (jnp.int32(0), done, logits, cache, out, jnp.zeros((b,), jnp.int32))
  _, _, _, _, out, lengths = jax.lax.while_loop(cond, body, state)
  return out, lengths


def bucket(n: int, multiple: int) -> int:
  """Rounds a length up so shapes (and XLA compilations) come from a small set."""
  return max(multiple, -(-n // multiple) * multiple)


def batch_rows(n: int, batch_size: int, multiple: int = 1) -> int:
  """Rows to pad a chunk of n sequences to: the next power of two, at most `batch_size`
  (a few compiled shapes; one request's single row is not decoded as a full batch),
  rounded up to `multiple` (a mesh's data axes)."""
  rows = 1
  while rows < n:
    rows *= 2
  return bucket(min(rows, batch_size), multiple)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left",
              multiple: int = 16, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Pads token lists into ([B, T] ids, [B, T] mask), T bucketed, B padded to `rows`."""
  length = bucket(max(len(s) for s in seqs), multiple)
  rows = rows or len(seqs)
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), bool)
  for i, s in enumerate(seqs):
    s = list(s)[-length:]
    sl = slice(length - len(s), length) if side == "left" else slice(0, len(s))
    ids[i, sl], mask[i, sl] = s, True
  return ids, mask


def generate_ids(lm, seqs: Sequence[Sequence[int]], *, max_new_tokens: int,
                 eos_ids: Sequence[int], batch_size: int = 8, length_multiple: int = 16,
                 seed: int = 0, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 mesh=None) -> list[list[int]]:
  """Continuations of token lists, in left-padded batches of bucketed shapes (`batch_rows`).

  Row i's sampling key comes from (seed, i), so results do not depend on the
  batch a row lands in. With a mesh the batch is padded to split over its data
  axes and placed on it (`lm.params` should already be there).
  """
  pad = pad_id(lm.tokenizer)
  eos = jnp.asarray(eos_ids, jnp.int32)
  multiple = sharding.batch_multiple(mesh) if mesh is not None else 1
  out: list[list[int]] = []
  for start in range(0, len(seqs), batch_size):
    chunk = seqs[start:start + batch_size]
    rows = batch_rows(len(chunk), batch_size, multiple)
    ids, mask = pad_batch(chunk, pad, multiple=length_multiple, rows=rows)
    args = (ids, mask, row_keys(seed, np.arange(start, start + rows)))
    args = sharding.shard_batch(args, mesh) if mesh is not None else tuple(
        jnp.asarray(x) for x in args)
    new, lengths = generate(lm.cfg, lm.params, *args, eos, pad, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p)
    new, lengths = to_host(new), to_host(lengths)
    out += [new[i, :lengths[i]].tolist() for i in range(len(chunk))]
  return out


def generate_text(lm, prompts: Sequence[str], *, max_new_tokens: int = 64, seed: int = 0,
                  chat: bool = True, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0, batch_size: int = 8) -> list[str]:
  """Host-side convenience: strings in, completions out (batched, bucketed shapes)."""
  tok = lm.tokenizer
  seqs = [chat_prompt(tok, p) if chat else tok(p)["input_ids"] for p in prompts]
  new = generate_ids(lm, seqs, max_new_tokens=max_new_tokens, eos_ids=[tok.eos_token_id],
                     batch_size=batch_size, seed=seed, temperature=temperature, top_k=top_k,
                     top_p=top_p)
  return [tok.decode(ids, skip_special_tokens=True) for ids in new]
