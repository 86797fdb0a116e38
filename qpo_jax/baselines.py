"""Offline baselines that pick a source prompt per query, trained on the same D_0 as QPO.

Both see a query only through frozen sentence embeddings: the mean of a
language model's final hidden states over the text's tokens (by default the
policy's pretrained LM, so nothing beyond the models already in use is
needed; `TextEmbedder` computes each distinct text once).

  RewardModel       Prompt-OIRL-style: an MLP on [e_q, e_p, e_q * e_p] predicts
                    the outcome (zero-shot correctness, or few-shot per-query
                    accuracy as a soft label); per query the source prompt with
                    the highest score wins.
  ClassifierLookup  label routing made explicit: softmax regression on e_q
                    predicts the query's gold label, then the prompt with the
                    best D_0 accuracy on that class is used. Several source
                    prompts make a small target answer one label whatever the
                    query; this baseline says how far routing queries to them
                    goes without writing anything.

`capacity()` says what each trains, next to the policy's trained parameters in
the report. The fine-tuned variants, whose query encoder is trained too, are
in finetuned_baselines.py.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Sequence

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


class TextEmbedder:
  """[N, D] mean-pooled final hidden states of texts under a frozen LM (an empty text: zeros).

  Each distinct text is embedded once per embedder and kept.
  """

  def __init__(self, lm, *, max_len: int = 64, batch_size: int = 16):
    self.lm, self.max_len, self.batch_size = lm, max_len, batch_size
    self._seen: dict[str, np.ndarray] = {}

  @property
  def dim(self) -> int:
    return self.lm.cfg.d_model

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    new = sorted(set(texts) - self._seen.keys())
    ids = [self.lm.tokenizer(t, add_special_tokens=False)["input_ids"][:self.max_len]
           for t in new]
    for start in range(0, len(new), self.batch_size):
      chunk = ids[start:start + self.batch_size]
      tokens, mask = pad_batch([x or [0] for x in chunk], 0, side="right", multiple=16,
                               rows=self.batch_size)
      for i, x in enumerate(chunk):
        mask[i] &= bool(x)  # an empty prompt has no tokens: zero vector
      vecs = np.asarray(_mean_hidden(self.lm.cfg, self.lm.params, tokens, mask))
      for i, text in enumerate(new[start:start + len(chunk)]):
        self._seen[text] = vecs[i]
    return np.stack([self._seen[t] for t in texts]) if texts else np.zeros((0, self.dim),
                                                                            np.float32)


class Mlp(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.relu(nn.Dense(self.hidden)(x)))[..., 0]


def _param_count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


def _fit(model: nn.Module, x: np.ndarray, loss, *, steps: int, learning_rate: float,
         seed: int) -> tuple[Any, float]:
  """Full-batch AdamW on `loss(model outputs)`; returns (params, last loss)."""
  params = model.init(jax.random.key(seed), x[:1])["params"]
  tx = optax.adamw(learning_rate, weight_decay=1e-4)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    value, grads = jax.value_and_grad(lambda p: loss(model.apply({"params": p}, x)))(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  value = jnp.nan
  for _ in range(steps):
    params, opt, value = step(params, opt)
  return params, float(value)


class Standardized:
  """Feature standardisation fitted on the training rows."""

  def fit(self, x: np.ndarray) -> np.ndarray:
    self.mean, self.std = x.mean(0), x.std(0) + 1e-6
    return self(x)

  def __call__(self, x: np.ndarray) -> np.ndarray:
    return (x - self.mean) / self.std


class RewardModel:
  """Trained on records; `choose(queries, prompts)` returns the best prompt per query."""

  def __init__(self, embed: TextEmbedder, *, hidden: int = 64, steps: int = 300,
               learning_rate: float = 3e-3, seed: int = 0):
    self.embed, self.hidden, self.steps, self.lr, self.seed = embed, hidden, steps, \
        learning_rate, seed
    self.params = None
    self.scale = Standardized()

  def _features(self, queries: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    eq, ep = self.embed(queries), self.embed(prompts)
    return np.concatenate([eq, ep, eq * ep], axis=1)

  def fit(self, recs: Sequence[Record]) -> dict[str, float]:
    x = self.scale.fit(self._features([r.query for r in recs], [r.prompt for r in recs]))
    y = np.asarray([r.accuracy for r in recs], np.float32)
    self.params, value = _fit(
        Mlp(self.hidden), x, lambda z: optax.sigmoid_binary_cross_entropy(z, y).mean(),
        steps=self.steps, learning_rate=self.lr, seed=self.seed)
    pred = np.asarray(Mlp(self.hidden).apply({"params": self.params}, x)) > 0
    return {"loss": value, "train_accuracy": float(np.mean(pred == (y >= 0.5)))}

  def capacity(self) -> dict[str, Any]:
    return {"trained_parameters": _param_count(self.params),
            "frozen_encoder_parameters": self.embed.lm.cfg.num_params(),
            "what": f"MLP({3 * self.embed.dim} -> {self.hidden} -> 1) on frozen mean-pooled "
                    "embeddings of query and prompt"}

  def pair_scores(self, queries: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """[N] predicted logits of the pairs (queries[i], prompts[i])."""
    if self.params is None:
      raise ValueError("RewardModel.fit must run before scoring")
    x = self.scale(self._features(queries, prompts))
    return np.asarray(Mlp(self.hidden).apply({"params": self.params}, x))

  def scores(self, queries: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """[len(queries), len(prompts)] predicted logits."""
    q = np.repeat(np.arange(len(queries)), len(prompts))
    p = np.tile(np.arange(len(prompts)), len(queries))
    return self.pair_scores([queries[i] for i in q], [prompts[j] for j in p]).reshape(
        len(queries), len(prompts))

  def choose(self, queries: Sequence[str], prompts: Sequence[str]) -> list[str]:
    best = self.scores(queries, prompts).argmax(axis=1)
    return [prompts[j] for j in best]


def class_best_prompts(recs: Sequence[Record]) -> dict[int, str]:
  """For each gold label, the prompt with the best mean accuracy on that label's records
  (ties: the first prompt in sorted order)."""
  by: dict[int, dict[str, list[float]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for r in recs:
    by[r.label][r.prompt].append(r.accuracy)
  return {label: max(sorted(ps), key=lambda p: np.mean(ps[p])) for label, ps in
          sorted(by.items())}


class ClassifierLookup:
  """Predicts a query's label from its frozen embedding, then uses that class's best prompt."""

  def __init__(self, embed: TextEmbedder, *, steps: int = 300, learning_rate: float = 3e-2,
               seed: int = 0):
    self.embed, self.steps, self.lr, self.seed = embed, steps, learning_rate, seed
    self.params = None
    self.scale = Standardized()

  def fit(self, recs: Sequence[Record]) -> dict[str, Any]:
    first = {}
    for r in recs:  # one row per distinct query
      first.setdefault(r.query_id or r.query, r)
    rows = list(first.values())
    if any(r.label < 0 for r in rows):
      raise ValueError("classifier_lookup needs gold labels (a choice task)")
    self.labels = sorted({r.label for r in rows})
    index = {label: i for i, label in enumerate(self.labels)}
    y = np.asarray([index[r.label] for r in rows])
    x = self.scale.fit(self.embed([r.query for r in rows]))
    self.model = nn.Dense(len(self.labels))
    self.params, value = _fit(
        self.model, x,
        lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
        steps=self.steps, learning_rate=self.lr, seed=self.seed)
    self.prompts = class_best_prompts(recs)
    train_acc = float(np.mean(self.predict([r.query for r in rows]) == np.asarray(
        [r.label for r in rows])))
    return {"loss": value, "train_accuracy": train_acc,
            "class_prompts": {str(k): v for k, v in self.prompts.items()}}

  def capacity(self) -> dict[str, Any]:
    return {"trained_parameters": _param_count(self.params),
            "frozen_encoder_parameters": self.embed.lm.cfg.num_params(),
            "what": f"softmax regression ({self.embed.dim} -> {len(self.labels)}) on frozen "
                    "mean-pooled query embeddings, then the class's best D_0 prompt"}

  def predict(self, queries: Sequence[str]) -> np.ndarray:
    if self.params is None:
      raise ValueError("ClassifierLookup.fit must run before predicting")
    logits = np.asarray(self.model.apply({"params": self.params}, self.scale(
        self.embed(queries))))
    return np.asarray(self.labels)[logits.argmax(axis=1)]

  def choose(self, queries: Sequence[str]) -> list[str]:
    return [self.prompts[int(label)] for label in self.predict(queries)]
