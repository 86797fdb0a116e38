"""Target LLM backends by config: `target.backend` is "local" (JAX) or "http" (OpenAI API).

Both expose `identity` (the evaluation-cache key part), `score_options(user_texts,
options) -> ([N, K] mean NLL, prompt tokens)` and `generate(user_texts,
max_new_tokens) -> [Generation]`; the evaluation code uses nothing else.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from qpo_jax.targets.http import HttpTarget, TargetError
from qpo_jax.targets.local import Generation, LocalTarget


def _local(cfg: Mapping[str, Any], mesh):
  from qpo_jax.models.registry import load_model  # pylint: disable=g-import-not-at-top

  return LocalTarget(load_model(cfg), chat=bool(cfg.get("chat", True)),
                     batch_size=int(cfg.get("batch_size", 8)),
                     length_multiple=int(cfg.get("length_multiple", 32)), mesh=mesh)


def _http(cfg: Mapping[str, Any], mesh):
  del mesh
  return HttpTarget(cfg.get("base_url") or os.environ.get("OPENAI_BASE_URL", ""),
                    cfg.get("model") or cfg.get("name", ""),
                    api_key_env=cfg.get("api_key_env", "OPENAI_API_KEY"),
                    scoring=cfg.get("scoring", "completions"),
                    concurrency=int(cfg.get("concurrency", 4)),
                    max_retries=int(cfg.get("max_retries", 5)),
                    timeout_s=float(cfg.get("timeout_s", 60)),
                    backoff_s=float(cfg.get("backoff_s", 1.0)))


BACKENDS = {"local": _local, "http": _http}


def build_target(cfg: Mapping[str, Any], mesh=None):
  """The target a config's `target` section describes (`backend` defaults to local)."""
  backend = cfg.get("backend", "local") or "local"
  if backend not in BACKENDS:
    raise ValueError(f"target.backend={backend!r} is not one of {sorted(BACKENDS)}")
  return BACKENDS[backend](cfg, mesh)


__all__ = ["BACKENDS", "Generation", "HttpTarget", "LocalTarget", "TargetError", "build_target"]
