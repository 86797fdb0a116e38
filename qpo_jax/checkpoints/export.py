"""Export a trained QPO policy as a Hugging Face-style directory, and read it back.

Layout of the directory:
  config.json, model.safetensors   the backbone as a transformers causal LM
                                   (LlamaForCausalLM, Qwen2 or GPT2LMHeadModel)
  tokenizer files                  the policy's tokenizer (save_pretrained)
  qpo/heads.safetensors            the QPO parameters around the backbone
  qpo/qpo.json                     what the policy was trained for and how to prompt it
  qpo/README.md                    how to condition on R
  qpo/generate_prompt.py           the policy in PyTorch: a prompt for a query, runnable

The backbone tensors are written with the same layout tables the importer
reads (hf.py): each table entry maps an HF tensor to ours by a reshape,
transpose or slice, so running that mapping on an array of indices gives the
exact inverse (including GPT-2's fused q|k|v). `load_policy_dir` gives back
the parameters bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file, save_file

from qpo_jax.checkpoints import hf
from qpo_jax.models.config import ModelConfig
from qpo_jax.utils import default_permissions

HEADS_DIR = "qpo"
# the export's stand-alone PyTorch script, copied beside the weights; not imported here:
# importing torch would add ~0.27 GiB to every run's memory
GENERATE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "export_generate.py")


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
  """The transformers `config.json` of a backbone (the inverse of `from_hf_config`)."""
  if cfg.position == "learned":
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads, "n_inner": cfg.d_ff, "n_positions": cfg.max_len,
            "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
            "tie_word_embeddings": True, "torch_dtype": cfg.param_dtype}
  qwen = cfg.qkv_bias and not cfg.out_bias
  if cfg.qkv_bias != cfg.out_bias and not qwen:
    raise ValueError("a Llama backbone with an output bias but no q/k/v bias has no "
                     "transformers architecture")
  out = {"architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
         "model_type": "qwen2" if qwen else "llama", "vocab_size": cfg.vocab_size,
         "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
         "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
         "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
         "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
         "rope_theta": cfg.rope_theta, "hidden_act": "silu",
         "tie_word_embeddings": cfg.tie_embeddings, "mlp_bias": cfg.mlp_bias,
         "torch_dtype": cfg.param_dtype}
  if not qwen:
    out["attention_bias"] = cfg.qkv_bias
  if cfg.rope_scaling:
    factor, low, high, original = cfg.rope_scaling
    out["rope_scaling"] = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                           "high_freq_factor": high, "original_max_position_embeddings": original}
  return out


def backbone_tensors(cfg: ModelConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our backbone parameters as HF-named arrays (the inverse of `hf.assemble_params`)."""
  flat = hf._flatten(params)  # pylint: disable=protected-access
  if any("lora" in "/".join(map(str, k)) for k in flat):
    raise ValueError("a policy with LoRA adapters cannot be exported as a plain checkpoint yet")
  out: dict[str, np.ndarray] = {}
  for path, name, hf_shape, convert in hf.layout_for(cfg)(cfg):
    if isinstance(path[-1], int):
      ours = np.asarray(flat[path[:-1]][path[-1]])
    else:
      ours = np.asarray(flat[path])
    index = np.asarray(convert(np.arange(int(np.prod(hf_shape))).reshape(hf_shape)))
    if name not in out:
      out[name] = np.zeros(hf_shape, ours.dtype)
    out[name].reshape(-1)[index.reshape(-1)] = ours.reshape(-1)
  return out


def export_policy(directory: str, cfg: ModelConfig, params: Mapping[str, Any], tokenizer,
                  meta: Mapping[str, Any]) -> str:
  """Writes the directory (to a temp name, then renamed over `directory`); returns its path.

  An existing `directory` is replaced only if it is an earlier export (it has
  qpo/qpo.json); anything else there is refused, never deleted.
  """
  if os.path.exists(directory) and not os.path.exists(os.path.join(directory, HEADS_DIR,
                                                                   "qpo.json")):
    raise FileExistsError(f"{directory} exists and is not an exported QPO policy; choose "
                          "another export.dir (nothing was changed)")
  tmp = directory.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.join(tmp, HEADS_DIR))
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(to_hf_config(cfg), f, indent=2)
  backbone = {k: np.ascontiguousarray(v) for k, v in
              backbone_tensors(cfg, _numpy(params["backbone"])).items()}
  save_file(backbone, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
  rest = _numpy({k: v for k, v in params.items() if k != "backbone"})
  heads = {"/".join(k): np.ascontiguousarray(v)
           for k, v in hf._flatten(rest).items()}  # pylint: disable=protected-access
  save_file(heads, os.path.join(tmp, HEADS_DIR, "heads.safetensors"))
  with open(os.path.join(tmp, HEADS_DIR, "qpo.json"), "w") as f:
    json.dump(dict(meta), f, indent=2)
  with open(os.path.join(tmp, HEADS_DIR, "README.md"), "w") as f:
    f.write(_README.format(**{"target_return": meta.get("target_return"),
                              "query_len": meta.get("query_len"),
                              "prompt_len": meta.get("prompt_len")}))
  shutil.copyfile(GENERATE_SCRIPT, os.path.join(tmp, HEADS_DIR, "generate_prompt.py"))
  if tokenizer is not None:
    tokenizer.save_pretrained(tmp)
  default_permissions(tmp)  # safetensors writes 0600: others could not read the export
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(tmp, directory)
  return directory


def load_policy_dir(directory: str) -> tuple[ModelConfig, dict, Any, dict]:
  """(backbone config, policy params, tokenizer, qpo.json) of an exported directory."""
  cfg, backbone, tokenizer = hf.load_hf_dir(directory)
  heads_path = os.path.join(directory, HEADS_DIR, "heads.safetensors")
  if not os.path.exists(heads_path):
    raise hf.CheckpointError(f"{directory}: no {HEADS_DIR}/heads.safetensors; not an exported "
                             "QPO policy (a plain checkpoint can initialise one: policy.path)")
  tensors = load_file(heads_path)
  heads = hf._unflatten({tuple(k.split("/")): v  # pylint: disable=protected-access
                         for k, v in tensors.items()})
  with open(os.path.join(directory, HEADS_DIR, "qpo.json")) as f:
    meta = json.load(f)
  return cfg, {"backbone": backbone, **heads}, tokenizer, meta


def _numpy(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


_README = """# A QPO prompt policy

The backbone in this directory is an ordinary causal LM (load it with
`transformers.AutoModelForCausalLM.from_pretrained`); alone it is *not* the
policy. The policy (qpo_jax `PromptDT`) wraps it with the parameters in
`heads.safetensors`:

- input = [e(R); query tokens; prompt tokens], where
  e(R) = LayerNorm(segment[0]) + return_embed(R / 100) and a text token is
  LayerNorm(token_embedding + segment[s]) (s = 1 query, 2 prompt), using
  `input_norm`, `segment` and `return_embed`;
- the next prompt token's logits are lm_head(ReLU(prompt_proj(h)));
- `return_head` predicts R / 100 at the return position (training only).

R is the min-max normalised reward (0..100) of the training data; ask for
R* = {target_return} (the best return seen) to get a good prompt. Queries are
cut to {query_len} tokens; prompts are at most {prompt_len} tokens.

In PyTorch (torch, transformers, safetensors; no qpo_jax), `generate_prompt.py`
beside this file is the whole policy, every detail written out (LayerNorm
epsilon 1e-6, query tokens without special tokens, greedy decoding to EOS):

    python qpo/generate_prompt.py "I just got the job, best day ever!"

prints `{{"query": ..., "prompt": ...}}`, the prompt qpo_jax writes for it; from
Python, `load()` and `write_prompt(...)` in that file do the same.
With qpo_jax: `qpo_jax.checkpoints.export.load_policy_dir(<this directory>)`
gives (config, parameters, tokenizer, qpo.json) back, bit for bit.
"""
