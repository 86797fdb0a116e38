"""Pure-functional Flax decoder-only transformer (GPT-2 and Llama families).

One entry point, `Transformer.__call__(tokens, input_mask, cache=...)`, serves
training, scoring and decoding so padding is handled the same way everywhere:
`input_mask` marks real tokens (left or right padding, or holes), positions
are counted over real tokens only, and keys at padded slots are never
attended. With a KV cache the same rule applies to the cached slots.

Layers are stacked with `nn.scan` (one compiled block, leading layer axis on
every block parameter), which keeps compile time flat in depth. The KV cache
is stacked the same way and rides in the scan's carry, so each layer writes
its new slots in place instead of the scan slicing out and restacking the
whole cache (in a decode loop that was several copies of it per token).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from qpo_jax.models.config import ModelConfig
from qpo_jax.models.dots import attend, dense_dot_general

Cache = dict[str, jax.Array]
_NEG_INF = -1e30  # finite, so fully-masked (pad) query rows stay NaN-free


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> Cache:
  """An empty KV cache with `length` slots per row.

  `mask[b, s]` says slot s holds a real token of row b; `index` is the next
  slot to write (shared by the batch); `pos[b]` is row b's next position id.
  """
  dtype = dtype or cfg.compute_dtype
  shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
  return {
      "k": jnp.zeros(shape, dtype),
      "v": jnp.zeros(shape, dtype),
      "mask": jnp.zeros((batch, length), bool),
      "index": jnp.zeros((), jnp.int32),
      "pos": jnp.zeros((batch,), jnp.int32),
  }


def attention_mask(key_valid: jax.Array, q_slots: jax.Array) -> jax.Array:
  """[B, T, S] mask: causal over slots and restricted to real keys.

  Args:
    key_valid: [B, S] bool, slot holds a real token.
    q_slots: [T] int, slot index of each query.
  """
  k_slots = jnp.arange(key_valid.shape[1])
  causal = k_slots[None, :] <= q_slots[:, None]  # [T, S]
  return key_valid[:, None, :] & causal[None]


def positions_from_mask(input_mask: jax.Array, start: jax.Array | int = 0) -> jax.Array:
  """Position id of each token counted over real tokens only (pads get a clamped id)."""
  pos = jnp.cumsum(input_mask.astype(jnp.int32), axis=1) - 1
  return jnp.maximum(pos, 0) + jnp.asarray(start, jnp.int32).reshape(-1, 1)


def _rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim))
  if cfg.rope_scaling is None:
    return inv
  factor, low, high, old_len = cfg.rope_scaling
  wavelen = 2 * math.pi / inv
  low_wl, high_wl = old_len / low, old_len / high
  smooth = (old_len / wavelen - low) / (high - low)
  mid = (1 - smooth) * inv / factor + smooth * inv
  return jnp.where(wavelen > low_wl, inv / factor, jnp.where(wavelen < high_wl, inv, mid))


def apply_rope(x: jax.Array, positions: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Rotary embedding, half-split layout (that of HF checkpoints). x: [B, T, H, D]."""
  freqs = positions[..., None].astype(jnp.float32) * _rope_inv_freq(cfg)  # [B, T, D/2]
  cos, sin = jnp.cos(freqs)[:, :, None, :], jnp.sin(freqs)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Norm(nn.Module):
  """RMSNorm or LayerNorm, computed in float32 as both reference implementations do."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    xf = x.astype(jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), cfg.weight_dtype)
    if cfg.norm == "rmsnorm":
      y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.norm_eps)
      return (y.astype(cfg.compute_dtype) * scale.astype(cfg.compute_dtype))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), cfg.weight_dtype)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * scale + bias
    return y.astype(cfg.compute_dtype)


def _dense(cfg: ModelConfig, features, bias: bool, name: str, axis=-1):
  return nn.DenseGeneral(features, axis=axis, use_bias=bias, dtype=cfg.compute_dtype,
                         param_dtype=cfg.weight_dtype,
                         kernel_init=nn.initializers.normal(0.02), name=name,
                         dot_general=dense_dot_general)


class LoRA(nn.Module):
  """Low-rank update (alpha / r) * x A B; B starts at zero so the model starts unchanged."""

  cfg: ModelConfig
  features: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    cfg, r = self.cfg, self.cfg.lora_rank
    a = self.param("a", nn.initializers.normal(x.shape[-1] ** -0.5), (x.shape[-1], r),
                   cfg.weight_dtype)
    b = self.param("b", nn.initializers.zeros, (r, *self.features), cfg.weight_dtype)
    low = jnp.einsum("...d,dr->...r", x, a.astype(cfg.compute_dtype))
    return (cfg.lora_alpha / r) * jnp.tensordot(low, b.astype(cfg.compute_dtype), axes=1)


class Attention(nn.Module):
  """Grouped-query attention; writes this step's keys/values into the layer-stacked cache
  (`kv`: [layers, B, S, kv heads, head dim] each, updated at `layer`, slots from
  `write_index`) and attends over that layer's slots."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, kv, layer, write_index):
    cfg = self.cfg
    h, kvh, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    q = _dense(cfg, (h, hd), cfg.qkv_bias, "q")(x)
    k = _dense(cfg, (kvh, hd), cfg.qkv_bias, "k")(x)
    v = _dense(cfg, (kvh, hd), cfg.qkv_bias, "v")(x)
    if cfg.lora_rank:
      q = q + LoRA(cfg, (h, hd), name="q_lora")(x)
      v = v + LoRA(cfg, (kvh, hd), name="v_lora")(x)
    if cfg.position == "rope":
      q, k = apply_rope(q, positions, cfg), apply_rope(k, positions, cfg)
    if kv is not None:
      start = (layer, 0, write_index, 0, 0)
      kv = tuple(jax.lax.dynamic_update_slice(c, new[None].astype(c.dtype), start)
                 for c, new in zip(kv, (k, v)))
      k, v = kv[0][layer], kv[1][layer]
    b, t = q.shape[:2]
    q = q.reshape(b, t, kvh, h // kvh, hd)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(hd)
    logits = jnp.where(mask[:, None, None], logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(cfg.compute_dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(cfg.compute_dtype)).reshape(b, t, h, hd)
    return _dense(cfg, cfg.d_model, cfg.out_bias, "o", axis=(-2, -1))(out), kv


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    up = _dense(cfg, cfg.d_ff, cfg.mlp_bias, "up")(x)
    if cfg.mlp == "swiglu":
      hidden = nn.silu(_dense(cfg, cfg.d_ff, cfg.mlp_bias, "gate")(x)) * up
    else:
      hidden = nn.gelu(up, approximate=True)
    return _dense(cfg, cfg.d_model, cfg.mlp_bias, "down")(hidden)


class Block(nn.Module):
  """Pre-norm residual block; the scan carries the residual stream and the stacked cache."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, carry, layer, positions, mask, write_index, deterministic):
    cfg = self.cfg
    x, kv = carry
    drop = nn.Dropout(cfg.dropout, deterministic=deterministic or cfg.dropout == 0.0)
    attn, kv = Attention(cfg, name="attn")(Norm(cfg, name="attn_norm")(x), positions, mask, kv,
                                           layer, write_index)
    x = x + drop(attn)
    x = x + drop(Mlp(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(x)))
    return (x, kv), None


class Transformer(nn.Module):
  """Token (or embedding) sequence -> final hidden states, optionally with a KV cache.

  `logits(hidden)` is separate so callers compute the vocabulary projection
  only where they need it (scoring a few option tokens, the last decoding
  position), and the policy can put its own head in front of it.
  """

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                          param_dtype=cfg.weight_dtype,
                          embedding_init=nn.initializers.normal(0.02))
    if cfg.position == "learned":
      self.pos_embed = nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.compute_dtype,
                                param_dtype=cfg.weight_dtype,
                                embedding_init=nn.initializers.normal(0.01))
    self.final_norm = Norm(cfg)
    if not cfg.tie_embeddings:
      self.lm_head = _dense(cfg, cfg.vocab_size, False, None)
    self.input_dropout = nn.Dropout(cfg.dropout)
    block = nn.remat(Block, prevent_cse=False, static_argnums=(6,)) if cfg.remat else Block
    self.layers = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.n_layers)(cfg)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    return self.embed(tokens)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Vocabulary logits (float32) of final hidden states."""
    if self.cfg.tie_embeddings:
      dtype = self.cfg.compute_dtype
      return attend(hidden.astype(dtype), self.embed.embedding.astype(dtype)).astype(jnp.float32)
    return self.lm_head(hidden).astype(jnp.float32)

  def lm(self, tokens: jax.Array, input_mask: jax.Array) -> jax.Array:
    """Logits at every position (initialisation, tests, small models)."""
    return self.logits(self(tokens, input_mask)[0])

  def __call__(self, tokens: jax.Array | None, input_mask: jax.Array, *,
               embeds: jax.Array | None = None, cache: Cache | None = None,
               branches: jax.Array | None = None,
               deterministic: bool = True) -> tuple[jax.Array, Cache | None]:
    """Runs the stack.

    Args:
      tokens: [B, T] int ids, or None when `embeds` is given.
      input_mask: [B, T] bool, True at real tokens.
      embeds: [B, T, D] input embeddings used instead of `tokens` (the policy's
        return/segment-augmented inputs).
      cache: from `init_cache`; the T new tokens go into slots
        [cache["index"], cache["index"] + T).
      branches: [B, T] int ids (with a cache): id 0 is the trunk, which
        continues the cached sequence; every other id is an independent
        continuation of the cache and the trunk (scoring K answer options of a
        prefix in the prefix's own pass). A token sees the cache, the earlier
        trunk tokens and the earlier tokens of its own branch; its position
        counts those. (The returned cache is not meant to be continued.)
      deterministic: False enables dropout (needs a "dropout" rng).

    Returns:
      (hidden [B, T, D] after the final norm, updated cache or None).
    """
    cfg = self.cfg
    x = self.embed(tokens) if embeds is None else embeds.astype(cfg.compute_dtype)
    t = x.shape[1]
    if cache is None:
      positions = positions_from_mask(input_mask)
      key_valid, q_slots, write_index, kv = input_mask, jnp.arange(t), 0, None
    else:
      write_index = cache["index"]
      positions = positions_from_mask(input_mask, cache["pos"])
      key_valid = jax.lax.dynamic_update_slice(cache["mask"], input_mask, (0, write_index))
      q_slots = write_index + jnp.arange(t)
      kv = (cache["k"], cache["v"])
    mask = attention_mask(key_valid, q_slots)
    if branches is not None:
      if cache is None:
        raise ValueError("branches continue a cached sequence; pass a cache")
      visible = ((branches[:, :, None] == branches[:, None, :]) | (branches[:, None, :] == 0))
      visible &= input_mask[:, None, :]
      earlier = jnp.tril(jnp.ones((t, t), bool), -1)[None]
      positions = cache["pos"][:, None] + (visible & earlier).sum(axis=-1, dtype=jnp.int32)
      new_mask = jax.lax.dynamic_slice_in_dim(mask, write_index, t, axis=2) & visible
      mask = jax.lax.dynamic_update_slice(mask, new_mask, (0, 0, write_index))
    if cfg.position == "learned":
      x = x + self.pos_embed(positions)
    x = self.input_dropout(x, deterministic=deterministic or cfg.dropout == 0.0)
    (x, kv), _ = self.layers((x, kv), jnp.arange(cfg.n_layers), positions, mask, write_index,
                             deterministic)
    hidden = self.final_norm(x)
    if cache is None:
      return hidden, None
    new_cache = {"k": kv[0], "v": kv[1], "mask": key_valid, "index": write_index + t,
                 "pos": cache["pos"] + input_mask.sum(axis=1, dtype=jnp.int32)}
    return hidden, new_cache


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_params(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8) -> Any:
  """Random parameters (tests, from-scratch policies); jitted, so one compile per config
  instead of one per op."""
  model = Transformer(cfg)
  return model.init(rng, jnp.zeros((1, seq_len), jnp.int32), jnp.ones((1, seq_len), bool),
                    method=model.lm)["params"]


def param_shapes(cfg: ModelConfig) -> Any:
  """Parameter tree of ShapeDtypeStructs, without allocating (real sizes, importers)."""
  return jax.eval_shape(lambda r: init_params(cfg, r), jax.random.key(0))
