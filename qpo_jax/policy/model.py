"""The prompt decision transformer: a causal LM conditioned on a target return.

Input = [e(R); q_1..q_Lq; p_1..p_Lp]: query tokens = LN(tok_emb + seg[1]),
prompt tokens = LN(tok_emb + seg[2]) (the spec's segment embeddings and
LayerNorm), through any decoder of `models.transformer` (GPT-2 or Llama
family). The prompt head is lm_head(ReLU(Linear(d->d)(h))): p_1 is predicted
at the last real query token and p_t at p_{t-1}. Query and prompt are
right-padded; the mask carries the holes, so positions and attention see real
tokens only, in training and in cached sampling alike.

The return enters as e(R) = LN(seg[0]) + Linear(1->d)(R / RETURN_SCALE): on
the normalised 0..100 scale divided to 0..1, added *after* the normalisation.
(The spec's LN(Linear(R) + seg[0]) removes R's magnitude: at init R = 80 and
R = 100 gave inputs whose RMS differed by 0.002, so R* = 100 meant little.)
With a pretrained backbone the LayerNorm's gain and the return projection
start at the scale of the backbone's token embeddings, so the pretrained LM
first sees inputs of the size it was trained on.

The return head is Linear(d->1) on h at the return position, predicting
R / RETURN_SCALE. Causal attention lets that position see only e(R), so R_hat
can only reconstruct R: the MSE term shapes how R is represented (as in the
authors' code); it does not value a prompt (train_step.py says how it is weighed).
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from qpo_jax.models.config import ModelConfig
from qpo_jax.models.dots import dense_dot_general
from qpo_jax.models.transformer import Transformer

SEG_RETURN, SEG_QUERY, SEG_PROMPT = 0, 1, 2
RETURN_SCALE = 100.0  # returns are min-max normalised to 0..100 (spec); the model sees R / 100


class PromptDT(nn.Module):
  """See the module docstring. Parameters: `backbone` (the LM) plus the small heads."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    dense = lambda n, name: nn.Dense(n, dtype=cfg.compute_dtype,  # noqa: E731
                                     param_dtype=cfg.weight_dtype, name=name,
                                     kernel_init=nn.initializers.normal(0.02),
                                     dot_general=dense_dot_general)
    self.backbone = Transformer(cfg)
    self.return_embed = nn.Dense(cfg.d_model, dtype=cfg.compute_dtype,
                                 param_dtype=cfg.weight_dtype, name="return_embed",
                                 kernel_init=nn.initializers.normal(1.0))
    self.segment = nn.Embed(3, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                            embedding_init=nn.initializers.normal(0.02))
    self.input_norm = nn.LayerNorm(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    self.prompt_proj = dense(cfg.d_model, "prompt_proj")
    self.return_head = dense(1, "return_head")

  def embed_return(self, returns: jax.Array) -> jax.Array:
    """[B] returns (0..100) -> [B, 1, D]: the segment, normalised, plus R / 100 projected."""
    r = returns.astype(jnp.float32)[:, None, None] / RETURN_SCALE
    return self.input_norm(self.segment(jnp.int32(SEG_RETURN))) + self.return_embed(r)

  def embed_text(self, tokens: jax.Array, segment: int) -> jax.Array:
    return self.input_norm(self.backbone.embed_tokens(tokens) + self.segment(jnp.int32(segment)))

  def prompt_logits(self, hidden: jax.Array) -> jax.Array:
    return self.backbone.logits(nn.relu(self.prompt_proj(hidden)))

  def predict_return(self, hidden_at_return: jax.Array) -> jax.Array:
    """R_hat in return units (0..100); the head itself works on the 0..1 scale."""
    return RETURN_SCALE * self.return_head(hidden_at_return)[..., 0].astype(jnp.float32)

  def hidden_states(self, returns, query, query_mask, prompt, prompt_mask, *,
                    deterministic: bool = True) -> jax.Array:
    """[B, 1 + Lq + Lp, D] backbone output over [e(R); query; prompt] (the inputs and the body)."""
    b = query.shape[0]
    embeds = jnp.concatenate([self.embed_return(returns), self.embed_text(query, SEG_QUERY),
                              self.embed_text(prompt, SEG_PROMPT)], axis=1)
    mask = jnp.concatenate([jnp.ones((b, 1), bool), query_mask, prompt_mask], axis=1)
    return self.backbone(None, mask, embeds=embeds, deterministic=deterministic)[0]

  def __call__(self, returns, query, query_mask, prompt, prompt_mask, *,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced pass: ([B, Lp, V] logits predicting each prompt token, [B] R_hat)."""
    b, lq = query.shape
    hidden = self.hidden_states(returns, query, query_mask, prompt, prompt_mask,
                                deterministic=deterministic)
    # slot of the last real query token (0, the return, for an empty query) predicts p_1
    last_query = query_mask.sum(axis=1)
    first = hidden[jnp.arange(b), last_query][:, None]
    pred = jnp.concatenate([first, hidden[:, 1 + lq:-1]], axis=1)
    return self.prompt_logits(pred), self.predict_return(hidden[:, 0])

  def prefix(self, returns, query, query_mask, cache):
    """Runs [R; query] into the cache for sampling; returns (hidden at the last real query, cache)."""
    b = query.shape[0]
    embeds = jnp.concatenate([self.embed_return(returns), self.embed_text(query, SEG_QUERY)], 1)
    mask = jnp.concatenate([jnp.ones((b, 1), bool), query_mask], axis=1)
    hidden, cache = self.backbone(None, mask, embeds=embeds, cache=cache)
    return hidden[jnp.arange(b), query_mask.sum(axis=1)], cache

  def step(self, token, token_mask, cache):
    """One prompt token [B] into the cache; returns (next-token logits [B, V], cache)."""
    embeds = self.embed_text(token[:, None], SEG_PROMPT)
    hidden, cache = self.backbone(None, token_mask[:, None], embeds=embeds, cache=cache)
    return self.prompt_logits(hidden[:, 0]), cache


def init_policy(cfg: ModelConfig, rng: jax.Array, backbone_params: Any | None = None,
                query_len: int = 4, prompt_len: int = 4) -> Any:
  """Policy parameters; the backbone's are the pretrained ones when given.

  With a pretrained backbone only the heads (and LoRA adapters) are initialised:
  a random backbone that would be thrown away costs the model's size in memory
  the allocator keeps afterwards.
  """
  if backbone_params is None:
    return _fresh_policy(cfg, rng, query_len, prompt_len, False)
  shapes = jax.eval_shape(lambda r: _fresh_policy(cfg, r, query_len, prompt_len, False), rng)
  params = _fresh_policy(cfg, rng, query_len, prompt_len, True)
  backbone = with_pretrained(shapes["backbone"], params["backbone"], backbone_params)
  return _at_embedding_scale({**params, "backbone": backbone})


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _fresh_policy(cfg: ModelConfig, rng: jax.Array, query_len: int, prompt_len: int,
                  adapters_only: bool) -> Any:
  """Jitted: one compile per config instead of one per op (tiny-llama: 7.7 s -> 2.4 s).

  `adapters_only` keeps just the LoRA leaves of the backbone (XLA then never
  computes the rest).
  """
  params = PromptDT(cfg).init(
      rng, jnp.zeros((1,)), jnp.zeros((1, query_len), jnp.int32), jnp.ones((1, query_len), bool),
      jnp.zeros((1, prompt_len), jnp.int32), jnp.ones((1, prompt_len), bool))["params"]
  if adapters_only:
    params = {**params, "backbone": lora_leaves(params["backbone"])}
  return params


def lora_leaves(backbone: Any) -> Any:
  """The LoRA adapters of a backbone's parameter tree, alone."""
  flat = flax.traverse_util.flatten_dict(backbone, sep="/")
  return flax.traverse_util.unflatten_dict({k: v for k, v in flat.items() if "_lora/" in k},
                                           sep="/")


def _at_embedding_scale(params: Any) -> Any:
  """Input LayerNorm gain and return projection scaled to the backbone's token-embedding RMS.

  LN(tok_emb + seg) has unit RMS; a pretrained LM's embeddings are much smaller
  (SmolLM2: 0.13), so with gain 1 its first layers would see inputs 7x the
  size they were trained on. The return projection gets the same scale, so
  R and the tokens start comparable.
  """
  emb = params["backbone"]["embed"]["embedding"]
  rms = jnp.sqrt(jnp.mean(jnp.square(jnp.asarray(emb, jnp.float32))))
  norm = dict(params["input_norm"], scale=jnp.full_like(params["input_norm"]["scale"], rms))
  ret = dict(params["return_embed"],
             kernel=params["return_embed"]["kernel"] * rms.astype(
                 params["return_embed"]["kernel"].dtype))
  return {**params, "input_norm": norm, "return_embed": ret}


def with_pretrained(shapes: Any, adapters: Any, pretrained: Any) -> Any:
  """The backbone tree `shapes` describes: pretrained leaves, fresh LoRA `adapters`."""
  flat = flax.traverse_util.flatten_dict(pretrained, sep="/")
  fresh = flax.traverse_util.flatten_dict(adapters, sep="/") if adapters else {}
  out = {}
  for name, like in flax.traverse_util.flatten_dict(shapes, sep="/").items():
    if name in flat:
      if flat[name].shape != like.shape:
        raise ValueError(f"pretrained {name} has shape {flat[name].shape}, the policy's backbone "
                         f"config wants {like.shape}")
      out[name] = flat.pop(name)
    elif "_lora/" not in name:
      raise ValueError(f"pretrained parameters lack {name} that the policy's backbone needs")
    else:
      out[name] = fresh[name]
  if flat:
    raise ValueError(f"pretrained parameters have {sorted(flat)[:3]} the backbone does not use")
  return flax.traverse_util.unflatten_dict(out, sep="/")


def pretrained_policy(spec, rng: jax.Array, **overrides):
  """(cfg, policy params, tokenizer) with the backbone from a model spec (HF, GGUF, SmolLM2)."""
  from qpo_jax.checkpoints.registry import load_model  # pylint: disable=g-import-not-at-top

  lm = load_model(spec)
  cfg = lm.cfg.replace(**overrides) if overrides else lm.cfg
  return cfg, init_policy(cfg, rng, backbone_params=lm.params), lm.tokenizer
