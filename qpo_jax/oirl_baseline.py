"""Prompt-OIRL-style baseline: a reward model r(q, p) picks the best source prompt per query.

Features are frozen sentence embeddings: the mean of a language model's final
hidden states over the text's tokens (by default the policy's pretrained LM,
so nothing beyond the models already in use is needed). A small MLP on
[e_q, e_p, e_q * e_p] is trained on the same offline data as the policy to
predict the outcome (zero-shot correctness, or few-shot per-query accuracy as
a soft label); at test time it scores every source prompt for each query and
the highest score wins.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qpo_jax.decoding import pad_batch
from qpo_jax.models.config import ModelConfig
from qpo_jax.models.transformer import Transformer
from qpo_jax.store.records import Record


@functools.partial(jax.jit, static_argnames=("cfg",))
def _mean_hidden(cfg: ModelConfig, params, tokens, mask):
  hidden, _ = Transformer(cfg).apply({"params": params}, tokens, mask)
  m = mask[..., None].astype(jnp.float32)
  return (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def embed_texts(lm, texts: Sequence[str], *, max_len: int = 64, batch_size: int = 16
                ) -> np.ndarray:
  """[N, D] mean-pooled final hidden states of each text (an empty text gives zeros)."""
  unique = sorted(set(texts))
  ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:max_len] for t in unique]
  out = np.zeros((len(unique), lm.cfg.d_model), np.float32)
  for start in range(0, len(unique), batch_size):
    chunk = [x or [0] for x in ids[start:start + batch_size]]
    tokens, mask = pad_batch(chunk, 0, side="right", multiple=16, rows=batch_size)
    for i, x in enumerate(ids[start:start + batch_size]):
      mask[i] &= bool(x)  # an empty prompt has no tokens: zero vector
    vecs = np.asarray(_mean_hidden(lm.cfg, lm.params, tokens, mask))
    out[start:start + len(chunk)] = vecs[:len(chunk)]
  index = {t: i for i, t in enumerate(unique)}
  return out[[index[t] for t in texts]]


class _Mlp(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.relu(nn.Dense(self.hidden)(x)))[..., 0]


class RewardModel:
  """Trained on records; `choose(queries, prompts)` returns the best prompt per query."""

  def __init__(self, lm, *, hidden: int = 64, steps: int = 300, learning_rate: float = 3e-3,
               seed: int = 0):
    self.lm, self.hidden, self.steps, self.lr, self.seed = lm, hidden, steps, learning_rate, seed
    self.params = None
    self.mean = self.std = None

  def _features(self, queries: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    eq, ep = embed_texts(self.lm, queries), embed_texts(self.lm, prompts)
    return np.concatenate([eq, ep, eq * ep], axis=1)

  def fit(self, recs: Sequence[Record]) -> dict[str, float]:
    x = self._features([r.query for r in recs], [r.prompt for r in recs])
    y = np.asarray([r.accuracy for r in recs], np.float32)
    self.mean, self.std = x.mean(0), x.std(0) + 1e-6
    x = (x - self.mean) / self.std
    model = _Mlp(self.hidden)
    params = model.init(jax.random.key(self.seed), x[:1])["params"]
    tx = optax.adamw(self.lr, weight_decay=1e-4)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
      def loss(p):
        return optax.sigmoid_binary_cross_entropy(model.apply({"params": p}, x), y).mean()
      value, grads = jax.value_and_grad(loss)(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), opt, value

    for _ in range(self.steps):
      params, opt, value = step(params, opt)
    self.params = params
    pred = np.asarray(model.apply({"params": params}, x)) > 0
    return {"loss": float(value), "train_accuracy": float(np.mean(pred == (y >= 0.5)))}

  def scores(self, queries: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """[len(queries), len(prompts)] predicted logits."""
    if self.params is None:
      raise ValueError("RewardModel.fit must run before scoring")
    q = np.repeat(np.arange(len(queries)), len(prompts))
    p = np.tile(np.arange(len(prompts)), len(queries))
    x = (self._features([queries[i] for i in q], [prompts[j] for j in p]) - self.mean) / self.std
    return np.asarray(_Mlp(self.hidden).apply({"params": self.params}, x)).reshape(
        len(queries), len(prompts))

  def choose(self, queries: Sequence[str], prompts: Sequence[str]) -> list[str]:
    best = self.scores(queries, prompts).argmax(axis=1)
    return [prompts[j] for j in best]
