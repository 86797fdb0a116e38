"""Import Hugging Face checkpoints (config.json + *.safetensors) into our parameter tree.

The tensor layouts (HF name, HF shape, how it becomes our array) are written
once per family and reused by the GGUF importer, which first renames llama.cpp
tensors to HF names. Every tensor is checked for presence and shape before any
conversion, and errors name the tensor and the file it was looked for in.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Iterator, Mapping

from absl import logging
import ml_dtypes
import numpy as np

from qpo_jax.models import config as config_lib
from qpo_jax.models.config import ModelConfig


class CheckpointError(ValueError):
  """A checkpoint that does not match the model it is loaded into."""


# (our parameter path, HF tensor name, expected HF shape, HF array -> our array)
Entry = tuple[tuple[str, ...], str, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _identity(x):
  return x


def _linear_in_out(shape):
  """PyTorch Linear weight [out, in] -> our kernel [in, *shape]."""
  return lambda w: w.T.reshape(w.shape[1], *shape)


def _out_in_heads(h, hd):
  """o_proj weight [D, H*hd] -> our kernel [H, hd, D]."""
  return lambda w: w.T.reshape(h, hd, w.shape[0])


def llama_layout(cfg: ModelConfig) -> Iterator[Entry]:
  d, h, kvh, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  yield ("embed", "embedding"), "model.embed_tokens.weight", (cfg.vocab_size, d), _identity
  yield ("final_norm", "scale"), "model.norm.weight", (d,), _identity
  if not cfg.tie_embeddings:
    yield ("lm_head", "kernel"), "lm_head.weight", (cfg.vocab_size, d), lambda w: w.T
  for i in range(cfg.n_layers):
    pre = f"model.layers.{i}."
    layer = lambda *path: ("layers", *path, i)  # noqa: E731 - index marks the layer slot
    yield layer("attn_norm", "scale"), pre + "input_layernorm.weight", (d,), _identity
    yield layer("mlp_norm", "scale"), pre + "post_attention_layernorm.weight", (d,), _identity
    for name, heads in (("q", h), ("k", kvh), ("v", kvh)):
      w = f"{pre}self_attn.{name}_proj."
      yield layer("attn", name, "kernel"), w + "weight", (heads * hd, d), _linear_in_out((heads, hd))
      if cfg.qkv_bias:
        yield layer("attn", name, "bias"), w + "bias", (heads * hd,), lambda b, s=(heads, hd): b.reshape(s)
    yield layer("attn", "o", "kernel"), pre + "self_attn.o_proj.weight", (d, h * hd), _out_in_heads(h, hd)
    if cfg.out_bias:
      yield layer("attn", "o", "bias"), pre + "self_attn.o_proj.bias", (d,), _identity
    for name, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
      yield layer("mlp", name, "kernel"), f"{pre}mlp.{name}_proj.weight", shape, lambda w: w.T
      if cfg.mlp_bias:
        yield layer("mlp", name, "bias"), f"{pre}mlp.{name}_proj.bias", shape[:1], _identity


def gpt2_layout(cfg: ModelConfig) -> Iterator[Entry]:
  d, h, hd, f = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff
  yield ("embed", "embedding"), "wte.weight", (cfg.vocab_size, d), _identity
  yield ("pos_embed", "embedding"), "wpe.weight", (cfg.max_len, d), _identity
  yield ("final_norm", "scale"), "ln_f.weight", (d,), _identity
  yield ("final_norm", "bias"), "ln_f.bias", (d,), _identity
  for i in range(cfg.n_layers):
    pre = f"h.{i}."
    layer = lambda *path: ("layers", *path, i)  # noqa: E731
    for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
      yield layer(ours, "scale"), f"{pre}{theirs}.weight", (d,), _identity
      yield layer(ours, "bias"), f"{pre}{theirs}.bias", (d,), _identity
    # c_attn is a Conv1D: weight [in, 3*out], columns q | k | v.
    for j, name in enumerate("qkv"):
      yield (layer("attn", name, "kernel"), pre + "attn.c_attn.weight", (d, 3 * h * hd),
             lambda w, j=j: w[:, j * h * hd:(j + 1) * h * hd].reshape(d, h, hd))
      yield (layer("attn", name, "bias"), pre + "attn.c_attn.bias", (3 * h * hd,),
             lambda b, j=j: b[j * h * hd:(j + 1) * h * hd].reshape(h, hd))
    yield layer("attn", "o", "kernel"), pre + "attn.c_proj.weight", (h * hd, d), lambda w: w.reshape(h, hd, d)
    yield layer("attn", "o", "bias"), pre + "attn.c_proj.bias", (d,), _identity
    yield layer("mlp", "up", "kernel"), pre + "mlp.c_fc.weight", (d, f), _identity
    yield layer("mlp", "up", "bias"), pre + "mlp.c_fc.bias", (f,), _identity
    yield layer("mlp", "down", "kernel"), pre + "mlp.c_proj.weight", (f, d), _identity
    yield layer("mlp", "down", "bias"), pre + "mlp.c_proj.bias", (d,), _identity


def layout_for(cfg: ModelConfig) -> Callable[[ModelConfig], Iterator[Entry]]:
  return gpt2_layout if cfg.position == "learned" else llama_layout


def assemble_params(cfg: ModelConfig, tensors: Mapping[str, Any], source: str,
                    name_prefixes: tuple[str, ...] = ("",)) -> dict:
  """Builds our (layer-stacked) parameter tree from named checkpoint tensors.

  Args:
    tensors: HF tensor name -> array (lazy mappings are fine: each is read once).
    source: what to name in errors (a directory or file).
    name_prefixes: prefixes tried in order (GPT-2 checkpoints come with or
      without "transformer.").
  """
  from qpo_jax.models.transformer import param_shapes  # local: keeps import light

  dtype = cfg.weight_dtype
  expected = _flatten(param_shapes(cfg))
  out: dict[tuple[str, ...], Any] = {}
  used = set()
  for path, name, hf_shape, convert in layout_for(cfg)(cfg):
    full = next((p + name for p in name_prefixes if p + name in tensors), None)
    if full is None:
      raise CheckpointError(f"{source}: missing tensor {name!r} (needed for {'/'.join(map(str, path))})")
    used.add(full)
    raw = tensors[full]
    if tuple(raw.shape) != hf_shape:
      raise CheckpointError(
          f"{source}: tensor {full!r} has shape {tuple(raw.shape)}, expected {hf_shape} "
          f"for d_model={cfg.d_model}, n_heads={cfg.n_heads}, n_kv_heads={cfg.n_kv_heads}, "
          f"head_dim={cfg.head_dim}, d_ff={cfg.d_ff}, vocab={cfg.vocab_size}")
    value = np.asarray(convert(np.asarray(raw, np.float32)), dtype)
    if isinstance(path[-1], int):  # per-layer tensor: goes into slot i of the stacked array
      key, i = path[:-1], path[-1]
      if key not in out:
        out[key] = np.zeros(expected[key].shape, dtype)
      out[key][i] = value
    else:
      out[path] = value
  missing = set(expected) - set(out)
  if missing:  # a layout bug, not a user error; never hand back a partial tree
    raise AssertionError(f"layout left parameters unset: {sorted(missing)}")
  unused = [k for k in tensors if k not in used and not _is_buffer(k)]
  if unused:
    logging.warning("%s: %d checkpoint tensors not used, e.g. %s", source, len(unused), unused[:5])
  return _unflatten(out)


def _is_buffer(name: str) -> bool:
  return name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")) or (
      name == "lm_head.weight")


def _flatten(tree, prefix=()):
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(_flatten(v, prefix + (k,)))
    else:
      flat[prefix + (k,)] = v
  return flat


def _unflatten(flat):
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsDir(Mapping):
  """Lazy name -> array view over every *.safetensors file of a directory.

  Reads the format directly with memmap so bfloat16 checkpoints load without
  a framework and nothing is copied until a tensor is used.
  """

  def __init__(self, directory: str):
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
      raise CheckpointError(f"{directory}: no *.safetensors files")
    self._where: dict[str, tuple[str, dict, int]] = {}
    for path in files:
      with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        try:
          header = json.loads(fh.read(header_len))
        except ValueError as e:
          raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from e
      for name, info in header.items():
        if name != "__metadata__":
          self._where[name] = (path, info, 8 + header_len)

  def __getitem__(self, name: str) -> np.ndarray:
    path, info, base = self._where[name]
    if info["dtype"] not in _ST_DTYPES:
      raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
    if end - start != int(np.prod(info["shape"])) * dtype.itemsize:
      raise CheckpointError(f"{path}: tensor {name!r} byte range does not match its shape")
    return np.memmap(path, dtype=dtype, mode="r", offset=base + start,
                     shape=tuple(info["shape"]))

  def __iter__(self):
    return iter(self._where)

  def __len__(self):
    return len(self._where)


def load_hf_dir(directory: str, **overrides) -> tuple[ModelConfig, dict, Any]:
  """Loads (config, params, tokenizer or None) from a local HF checkpoint directory.

  `overrides` replace ModelConfig fields (dtype, param_dtype, remat, ...).
  """
  cfg_path = os.path.join(directory, "config.json")
  if not os.path.exists(cfg_path):
    raise CheckpointError(f"{directory}: no config.json")
  with open(cfg_path) as fh:
    cfg = config_lib.from_hf_config(json.load(fh), source=cfg_path, **overrides)
  prefixes = ("", "transformer.") if cfg.position == "learned" else ("",)
  params = assemble_params(cfg, SafetensorsDir(directory), directory, prefixes)
  return cfg, params, load_hf_tokenizer(directory)


def load_hf_tokenizer(directory: str):
  """The directory's tokenizer, or None when it ships none (tiny test checkpoints)."""
  names = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
  if not any(os.path.exists(os.path.join(directory, n)) for n in names):
    logging.warning("%s: no tokenizer files; loading the model without a tokenizer", directory)
    return None
  import transformers  # heavy; only when a tokenizer is really there

  return transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
