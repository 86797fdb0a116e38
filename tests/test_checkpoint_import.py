"""GGUF import (dequantization, Q/K unpermuting) and clear errors for bad checkpoints."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from qpo_jax.checkpoints.gguf_import import load_gguf
from qpo_jax.checkpoints.hf import CheckpointError, load_hf_dir
from qpo_jax.models.config import UnsupportedArchitecture
from qpo_jax.checkpoints.registry import load_model
from qpo_jax.models.transformer import Transformer
from tests.gguf_reference import write_llama_gguf
from tests.hf_reference import hf_logits, tiny_hf_model

GGUF_SIZES = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2)


@pytest.mark.integration
def test_gguf_matches_hf_with_the_same_dequantized_weights(tmp_path):
  model = tiny_hf_model("llama", seed=5, **GGUF_SIZES)
  expected = write_llama_gguf(tmp_path / "tiny.gguf", model)
  with torch.no_grad():  # the reference holds exactly what the file stores
    for name, p in model.named_parameters():
      p.copy_(torch.from_numpy(expected[name]))
  cfg, params, tokenizer = load_gguf(str(tmp_path / "tiny.gguf"))
  assert tokenizer is None  # the file has no tokenizer metadata
  assert (cfg.n_heads, cfg.n_kv_heads, cfg.tie_embeddings, cfg.vocab_size) == (4, 2, False, 300)
  ids = np.random.default_rng(0).integers(0, 300, (2, 10))
  mask = np.ones((2, 10), bool)
  mask[1, :3] = False
  ours = np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                                           method=Transformer.lm))
  diff = np.abs(ours - hf_logits(model, ids, mask))[mask]
  assert diff.max() < 1e-4, diff.max()


def test_gguf_missing_tensor_is_named(tmp_path):
  write_llama_gguf(tmp_path / "bad.gguf", tiny_hf_model("llama", **GGUF_SIZES),
                   drop=("blk.1.ffn_down.weight",))
  with pytest.raises(CheckpointError, match=r"bad.gguf: missing tensor 'model.layers.1.mlp.down_proj"):
    load_gguf(str(tmp_path / "bad.gguf"))


def test_gguf_unknown_architecture(tmp_path):
  write_llama_gguf(tmp_path / "bert.gguf", tiny_hf_model("llama", **GGUF_SIZES), arch="bert")
  with pytest.raises(UnsupportedArchitecture, match="bert.gguf: unsupported GGUF architecture 'bert'"):
    load_gguf(str(tmp_path / "bert.gguf"))


def test_gguf_garbage_and_missing_file(tmp_path):
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
  with pytest.raises(CheckpointError, match="junk.gguf: not a readable GGUF"):
    load_gguf(str(tmp_path / "junk.gguf"))
  with pytest.raises(CheckpointError, match="no such GGUF file"):
    load_gguf(str(tmp_path / "absent.gguf"))


@pytest.fixture
def llama_dir(tmp_path):
  tiny_hf_model("llama").save_pretrained(tmp_path)
  return tmp_path


def test_hf_missing_tensor_is_named(llama_dir):
  f = llama_dir / "model.safetensors"
  tensors = safetensors.torch.load_file(f)
  del tensors["model.layers.1.self_attn.k_proj.weight"]
  safetensors.torch.save_file(tensors, f)
  with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.self_attn.k_proj.weight'"):
    load_hf_dir(str(llama_dir))


def test_hf_wrong_shape_is_named(llama_dir):
  cfg = json.loads((llama_dir / "config.json").read_text())
  cfg["intermediate_size"] = 100  # the weights were saved with 96
  (llama_dir / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(96, 48\), "
                                            r"expected \(100, 48\)"):
    load_hf_dir(str(llama_dir))


def test_hf_unknown_architecture(llama_dir):
  cfg = json.loads((llama_dir / "config.json").read_text())
  cfg["model_type"] = "bert"
  (llama_dir / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(UnsupportedArchitecture, match=r"config.json: unsupported architecture model_type='bert'"):
    load_hf_dir(str(llama_dir))


def test_hf_missing_files_and_corrupt_header(tmp_path, llama_dir):
  with pytest.raises(CheckpointError, match="no config.json"):
    load_hf_dir(str(tmp_path / "nowhere"))
  (llama_dir / "model.safetensors").write_bytes((16).to_bytes(8, "little") + b"{not json at all")
  with pytest.raises(CheckpointError, match="model.safetensors: unreadable safetensors header"):
    load_hf_dir(str(llama_dir))


def test_registry_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown model name 'gpt5'"):
    load_model({"name": "gpt5"})
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_model({"name": "hf", "path": str(tmp_path / "missing")})
  with pytest.raises(ValueError, match="set `preset`"):
    load_model({"name": "random"})


@pytest.mark.real_model
def test_a_gguf_tokenizer_is_built_once_per_process(tmp_path):
  """The target and the policy both name SmolLM2's tokenizer; it is built once (about 4 s)."""
  from qpo_jax.checkpoints.registry import load_tokenizer, smollm2_gguf_path

  first = load_tokenizer({"name": "random", "tokenizer": "smollm2"})
  assert load_tokenizer({"name": "smollm2-135m-instruct"}) is first
  assert first("Hello world")["input_ids"] and first.eos_token == "<|im_end|>"
  copy = tmp_path / "copy.gguf"  # the cache is per path and file version
  copy.symlink_to(smollm2_gguf_path())
  assert load_tokenizer({"name": "gguf", "path": str(copy)}) is not first
