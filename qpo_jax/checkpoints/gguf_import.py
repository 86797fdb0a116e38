"""Import llama.cpp GGUF files: dequantized weights and the tokenizer in the metadata.

Tensors are renamed to Hugging Face names and go through the same layout and
checks as safetensors checkpoints (`hf.assemble_params`). llama.cpp stores the
Q and K projections of Llama-architecture models with rows permuted for its
interleaved RoPE; `unpermute_rows` undoes that so our half-split RoPE applies.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

from absl import logging
import numpy as np

from qpo_jax.checkpoints.hf import CheckpointError, assemble_params, load_hf_tokenizer
from qpo_jax.models.config import ModelConfig, UnsupportedArchitecture

_SUPPORTED_QUANTS = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")
# llama.cpp tensor suffix -> HF Llama-family name (blk.N. -> model.layers.N.)
_LLAMA_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
# Architectures whose converter permutes Q/K rows (qwen2's does not).
_PERMUTED = {"llama": True, "qwen2": False}


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's permutation of Q/K rows (per head: interleaved -> halves)."""
  rows = w.shape[0]
  half = rows // n_heads // 2
  return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, path: str, key: str, default: Any = KeyError) -> Any:
  field = reader.fields.get(key)
  if field is None:
    if default is KeyError:
      raise CheckpointError(f"{path}: GGUF metadata has no {key!r}")
    return default
  return field.contents()


def config_from_gguf(reader, path: str, **overrides) -> ModelConfig:
  arch = _field(reader, path, "general.architecture")
  if arch not in _PERMUTED:
    raise UnsupportedArchitecture(
        f"{path}: unsupported GGUF architecture {arch!r}; supported: {sorted(_PERMUTED)}")
  get = lambda k, d=KeyError: _field(reader, path, f"{arch}.{k}", d)  # noqa: E731
  n_heads, d_model = int(get("attention.head_count")), int(get("embedding_length"))
  names = {t.name for t in reader.tensors}
  tokens = _field(reader, path, "tokenizer.ggml.tokens", None)
  vocab = int(get("vocab_size", len(tokens) if tokens is not None else 0))
  if not vocab:
    raise CheckpointError(f"{path}: GGUF metadata gives no vocabulary size")
  return ModelConfig(
      vocab_size=vocab, d_model=d_model, n_layers=int(get("block_count")), n_heads=n_heads,
      n_kv_heads=int(get("attention.head_count_kv", n_heads)),
      head_dim=int(get("rope.dimension_count", d_model // n_heads)),
      d_ff=int(get("feed_forward_length")), max_len=int(get("context_length", 2048)),
      norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
      rope_theta=float(get("rope.freq_base", 10000.0)),
      qkv_bias="blk.0.attn_q.bias" in names, out_bias="blk.0.attn_output.bias" in names,
      tie_embeddings="output.weight" not in names).replace(**overrides)


class _GGUFTensors(Mapping):
  """HF name -> dequantized float32 array, read on demand from a GGUF reader."""

  def __init__(self, reader, path: str, cfg: ModelConfig, permuted: bool):
    self._path, self._cfg, self._permuted = path, cfg, permuted
    self._by_name = {}
    for t in reader.tensors:
      hf = _hf_name(t.name)
      if hf is None:
        logging.warning("%s: ignoring GGUF tensor %s", path, t.name)
      else:
        self._by_name[hf] = t

  def __getitem__(self, name):
    import gguf  # the reader's own package; needed only to dequantize

    t = self._by_name[name]
    if t.tensor_type.name not in _SUPPORTED_QUANTS:
      raise CheckpointError(
          f"{self._path}: tensor {t.name!r} is {t.tensor_type.name}; "
          f"supported types: {_SUPPORTED_QUANTS}")
    w = gguf.quants.dequantize(t.data, t.tensor_type)
    w = np.asarray(w, np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
    if self._permuted and ".self_attn.q_proj." in name:
      w = unpermute_rows(w, self._cfg.n_heads)
    elif self._permuted and ".self_attn.k_proj." in name:
      w = unpermute_rows(w, self._cfg.n_kv_heads)
    return w

  def __iter__(self):
    return iter(self._by_name)

  def __len__(self):
    return len(self._by_name)


def _hf_name(gguf_name: str) -> str | None:
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  parts = gguf_name.split(".", 2)
  if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LLAMA_NAMES:
    return f"model.layers.{parts[1]}.{_LLAMA_NAMES[parts[2]]}"
  return None


def load_gguf(path: str, tokenizer_path: str | None = None,
              **overrides) -> tuple[ModelConfig, dict, Any]:
  """Loads (config, params, tokenizer) from a GGUF file.

  Args:
    tokenizer_path: an HF tokenizer directory to use instead of the one
      rebuilt from the GGUF metadata.
    overrides: ModelConfig fields to replace (dtype, param_dtype, ...).
  """
  import gguf

  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such GGUF file")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # the reader raises assorted errors on garbage
    raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from e
  cfg = config_from_gguf(reader, path, **overrides)
  arch = _field(reader, path, "general.architecture")
  params = assemble_params(cfg, _GGUFTensors(reader, path, cfg, _PERMUTED[arch]), path)
  tokenizer = load_hf_tokenizer(tokenizer_path) if tokenizer_path else gguf_tokenizer(path)
  if tokenizer is None:
    logging.warning("%s: no tokenizer metadata; loading the model without a tokenizer", path)
  return cfg, params, tokenizer


def gguf_tokenizer(path: str):
  """A GGUF file's tokenizer (None without tokenizer metadata), built once per process and
  file version: about 4 s for SmolLM2's, which the target, the policy and every model
  load use. Shared: callers never modify it."""
  st = os.stat(path)
  return _cached_tokenizer(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(path: str, size: int, mtime_ns: int):
  del size, mtime_ns  # part of the cache key only
  import gguf

  reader = gguf.GGUFReader(path)
  return tokenizer_from_gguf(reader, path) if "tokenizer.ggml.model" in reader.fields else None


# Pre-tokenizers we rebuild, by llama.cpp's `tokenizer.ggml.pre` name.
_PRE_TOKENIZERS = ("default", "gpt2", "smollm")


def tokenizer_from_gguf(reader, path: str):
  """A transformers fast tokenizer rebuilt from the GGUF metadata (byte-level BPE)."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
  import transformers

  model = _field(reader, path, "tokenizer.ggml.model")
  pre = _field(reader, path, "tokenizer.ggml.pre", "default")
  if model != "gpt2" or pre not in _PRE_TOKENIZERS:
    raise CheckpointError(
        f"{path}: cannot rebuild tokenizer model={model!r} pre={pre!r} from GGUF "
        f"(supported: byte-level BPE with pre-tokenizers {_PRE_TOKENIZERS}); pass "
        "tokenizer_path= with the model's Hugging Face tokenizer directory")
  tokens = list(_field(reader, path, "tokenizer.ggml.tokens"))
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, path, "tokenizer.ggml.merges")]
  types = list(_field(reader, path, "tokenizer.ggml.token_type", [1] * len(tokens)))
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                             fuse_unk=False, byte_fallback=False))
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre == "smollm":  # GPT-2 split, digits one by one
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  else:
    tok.pre_tokenizer = byte_level
  tok.decoder = decoders.ByteLevel()
  # Token types 3 (control) and 4 (user-defined) are matched whole, never split.
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t, ty in zip(tokens, types) if ty in (3, 4)])

  def token(key):
    i = _field(reader, path, f"tokenizer.ggml.{key}_token_id", None)
    return tokens[int(i)] if i is not None else None

  bos = token("bos")
  if _field(reader, path, "tokenizer.ggml.add_bos_token", False) and bos is not None:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tokens.index(bos))])
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=bos, eos_token=token("eos"),
      unk_token=token("unknown"), pad_token=token("padding"),
      chat_template=_field(reader, path, "tokenizer.chat_template", None))
