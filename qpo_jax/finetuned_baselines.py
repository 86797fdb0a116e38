"""The per-query selectors with the capacity QPO has: their query encoder is fine-tuned too.

The frozen baselines (baselines.py) train a head of ~1e5 parameters on a
frozen LM's embeddings, while QPO fine-tunes the whole LM; a router that
loses to QPO could just be a weaker classifier. Here the policy's own
pretrained LM encodes the query (mean of its final hidden states over the
query's tokens) and is trained end to end, exactly as much as QPO's round 1
trains (`train` settings: epochs, batch size, learning rate schedule, clip,
AdamW, LoRA or not), on D_0's queries, with two heads on the same encoder:

  reward head   the reward model's MLP on [h_q, e_p, h_q * e_p], e_p the frozen
                embedding of each source prompt: BCE of every D_0 outcome of the
                query (all source prompts in one step)
  label head    softmax over the task's labels: CE of the gold label

`choose_reward` is the fine-tuned reward model (best predicted source prompt
per query); `choose_lookup` the fine-tuned classifier_lookup (the predicted
class's best D_0 prompt).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qpo_jax import sharding
from qpo_jax.baselines import Mlp, Standardized, class_best_prompts
from qpo_jax.models.config import ModelConfig
from qpo_jax.models.transformer import Transformer
from qpo_jax.policy import train_step
from qpo_jax.policy.model import lora_leaves, with_pretrained
from qpo_jax.policy.settings import TrainSettings
from qpo_jax.store.records import Record
from qpo_jax.tokens import tokenize


class _Selector(nn.Module):
  cfg: ModelConfig
  num_labels: int
  hidden: int = 64

  def setup(self):
    self.backbone = Transformer(self.cfg)
    self.norm = nn.LayerNorm()
    self.reward = Mlp(self.hidden)
    self.label = nn.Dense(max(self.num_labels, 1))

  def encode(self, tokens, mask):
    hidden, _ = self.backbone(tokens, mask)
    m = mask[..., None].astype(jnp.float32)
    return self.norm((hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0))

  def __call__(self, tokens, mask, prompts):
    """([B, P] reward logits against the [P, D] prompt features, [B, C] label logits)."""
    h = self.encode(tokens, mask)
    b, p = h.shape[0], prompts.shape[0]
    hq = jnp.broadcast_to(h[:, None], (b, p, h.shape[-1]))
    ep = jnp.broadcast_to(prompts[None], (b, p, prompts.shape[-1]))
    return self.reward(jnp.concatenate([hq, ep, hq * ep], -1)), self.label(h)


def _loss(params, model, batch, prompts):
  rewards, labels = model.apply({"params": params}, batch["tokens"], batch["mask"], prompts)
  present = batch["present"].astype(jnp.float32)
  bce = (optax.sigmoid_binary_cross_entropy(rewards, batch["outcome"]) * present).sum() \
      / jnp.maximum(present.sum(), 1.0)
  ce = optax.softmax_cross_entropy_with_integer_labels(labels, batch["label"])
  ce = (ce * batch["has_label"]).sum() / jnp.maximum(batch["has_label"].sum(), 1.0)
  return bce + ce, {"bce": bce, "ce": ce}


@functools.partial(jax.jit, static_argnums=(0,))
def _apply(model, params, tokens, mask, prompts):
  return model.apply({"params": params}, tokens, mask, prompts)


class FinetunedSelectors:
  """Fits both heads and the encoder on D_0; see the module docstring."""

  def __init__(self, lm, tc: TrainSettings, *, seed: int, mesh=None, hidden: int = 64):
    self.lm, self.tc, self.seed, self.mesh, self.hidden = lm, tc, seed, mesh, hidden
    self.tokenizer, self.cfg = lm.tokenizer, lm.cfg
    self.params = None

  def _tokens(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return tokenize(self.tokenizer, list(queries), self.tc.query_len, False)

  def fit(self, recs: Sequence[Record], prompts: Sequence[str], prompt_embeddings: np.ndarray
          ) -> dict[str, Any]:
    """Trains on the records' outcomes with `prompts` (the source prompts, [P, D] frozen
    embeddings as the reward model's); the encoder takes over the LM's parameters."""
    self.prompts = list(prompts)
    column = {p: j for j, p in enumerate(self.prompts)}
    rows: dict[str, int] = {}
    queries, labels = [], []
    for r in recs:
      key = r.query_id or r.query
      if key not in rows:
        rows[key] = len(queries)
        queries.append(r.query)
        labels.append(r.label)
    outcome = np.zeros((len(queries), len(self.prompts)), np.float32)
    present = np.zeros_like(outcome)
    for r in recs:
      if r.prompt in column:
        outcome[rows[r.query_id or r.query], column[r.prompt]] = r.accuracy
        present[rows[r.query_id or r.query], column[r.prompt]] = 1.0
    self.label_values = sorted({y for y in labels if y >= 0})
    index = {y: i for i, y in enumerate(self.label_values)}
    label_ids = np.asarray([index.get(y, 0) for y in labels], np.int32)
    has_label = np.asarray([y >= 0 for y in labels], np.float32)
    self.class_prompts = class_best_prompts([r for r in recs if r.prompt in column]) \
        if self.label_values else {}
    self.prompt_features = jnp.asarray(Standardized().fit(np.asarray(prompt_embeddings)))
    self.model = _Selector(self.cfg, len(self.label_values), self.hidden)
    tokens, mask = self._tokens(queries)
    batch_size = min(self.tc.batch_size, len(queries))
    steps_per_epoch = max(1, len(queries) // batch_size)
    params = self._init(tokens[:1], mask[:1])
    tx = train_step.make_optimizer(self.tc, steps_per_epoch, params)
    opt = tx.init(params)
    model, features = self.model, self.prompt_features

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt, batch):
      (_, parts), grads = jax.value_and_grad(_loss, has_aux=True)(params, model, batch, features)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), opt, parts

    rng = np.random.default_rng(self.seed)
    history = []
    for epoch in range(int(self.tc.epochs)):
      order = rng.permutation(len(queries))[:steps_per_epoch * batch_size]
      for rows_ in np.split(order, steps_per_epoch):
        batch = {"tokens": tokens[rows_], "mask": mask[rows_], "outcome": outcome[rows_],
                 "present": present[rows_], "label": label_ids[rows_],
                 "has_label": has_label[rows_]}
        if self.mesh is not None:
          batch = sharding.shard_batch(batch, self.mesh)
        params, opt, parts = step(params, opt, batch)
      history.append({k: float(v) for k, v in parts.items()})
    del opt
    self.params = params
    return {"queries": len(queries), "steps": steps_per_epoch * int(self.tc.epochs),
            "last": history[-1] if history else {},
            "class_prompts": {str(k): v for k, v in self.class_prompts.items()}}

  def _init(self, tokens, mask):
    """Pretrained encoder (the LM's parameters, moved in), fresh heads and LoRA adapters."""
    rng = jax.random.key(self.seed)
    args = (jnp.asarray(tokens), jnp.asarray(mask), self.prompt_features)
    shapes = jax.eval_shape(lambda r: self.model.init(r, *args)["params"], rng)
    heads = jax.jit(lambda r: {k: v for k, v in self.model.init(r, *args)["params"].items()
                               if k != "backbone"})(rng)
    adapters = {} if not self.cfg.lora_rank else jax.jit(lambda r: lora_leaves(
        self.model.init(r, *args)["params"]["backbone"]))(rng)
    used = flax.traverse_util.flatten_dict(shapes["backbone"], sep="/")
    pretrained = {k: v for k, v in flax.traverse_util.flatten_dict(self.lm.params, sep="/").items()
                  if k in used}  # an untied LM head is not part of an encoder
    backbone = with_pretrained(shapes["backbone"], adapters,
                               flax.traverse_util.unflatten_dict(pretrained, sep="/"))
    self.lm = None  # its parameters now belong to the encoder being trained
    params = {**heads, "backbone": backbone}
    return sharding.shard_params(params, self.mesh)

  def capacity(self) -> dict[str, Any]:
    trained = train_step.trained_parameters(self.params, self.tc.freeze_backbone)
    return {"trained_parameters": trained, "frozen_encoder_parameters": 0,
            "what": "the policy's LM fine-tuned as the query encoder (as QPO's round 1 trains), "
                    "the reward model's MLP and a label head on it; source prompts' frozen "
                    "embeddings"}

  def _predict(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if self.params is None:
      raise ValueError("FinetunedSelectors.fit must run before choosing")
    out_r, out_l = [], []
    size = self.tc.batch_size
    for start in range(0, len(queries), size):
      chunk = list(queries[start:start + size])
      tokens, mask = self._tokens(chunk + [""] * (size - len(chunk)))
      r, y = _apply(self.model, self.params, jnp.asarray(tokens), jnp.asarray(mask),
                    self.prompt_features)
      out_r.append(np.asarray(r)[:len(chunk)])
      out_l.append(np.asarray(y)[:len(chunk)])
    return np.concatenate(out_r), np.concatenate(out_l)

  def choose(self, queries: Sequence[str]) -> dict[str, list[str]]:
    """{"reward_model_finetuned": ..., "classifier_lookup_finetuned": ...} prompts per query."""
    rewards, labels = self._predict(queries)
    out = {"reward_model_finetuned": [self.prompts[j] for j in rewards.argmax(1)]}
    if self.label_values:
      out["classifier_lookup_finetuned"] = [
          self.class_prompts[self.label_values[i]] for i in labels.argmax(1)]
    return out

