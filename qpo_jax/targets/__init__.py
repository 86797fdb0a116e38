"""Target LLM backends by config: `target.backend` is "local" (JAX) or "http" (OpenAI API).

A config's `target` section names the model (what `local` loads; `http` sends its
name) and has one part per backend, `target.local` and `target.http`, read here
into typed options; only the backend's own part applies. Both backends expose `identity` (the evaluation-cache key part), `score_options(user_texts,
options) -> ([N, K] mean NLL, prompt tokens)` and `generate(user_texts,
max_new_tokens) -> [Generation]`; the evaluation code uses nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Protocol, Sequence

from qpo_jax.config_rules import typed
from qpo_jax.targets.http import HttpTarget, TargetError
from qpo_jax.targets.local import Generation, LocalTarget


class Target(Protocol):
  """What every stage asks of a target LLM; `LocalTarget` and `HttpTarget` provide it.

  `identity` keys the evaluation cache (two targets with one identity must answer
  alike). `score_options` returns each text's mean NLL per option and the prompt
  tokens it read; `generate` returns one `Generation` per text. In a multi-process
  run (local targets only) both are collective: every process calls them with its
  share of the texts and gets its share's results (evaluation.py).
  """

  identity: str

  def score_options(self, user_texts: Sequence[str], options: Sequence[Sequence[str]]
                    ) -> tuple[Any, int]: ...

  def generate(self, user_texts: Sequence[str], max_new_tokens: int) -> list[Generation]: ...


@dataclasses.dataclass(frozen=True)
class LocalOptions:
  """`target.local`: how our JAX model is asked."""
  chat: bool  # render prompts with the model's chat template
  batch_size: int  # scoring / generation batch
  length_multiple: int  # pad lengths to a multiple of this (fewer compilations)


@dataclasses.dataclass(frozen=True)
class HttpOptions:
  """`target.http`: how an OpenAI-compatible server is asked."""
  base_url: str  # "" : $OPENAI_BASE_URL
  model: str  # "" : target.name
  api_key_env: str  # the environment variable holding the key
  scoring: str  # completions or chat_first_token
  concurrency: int
  max_retries: int
  timeout_s: float
  backoff_s: float


def _local(cfg: Mapping[str, Any], mesh):
  from qpo_jax.checkpoints.registry import load_model  # pylint: disable=g-import-not-at-top

  o = typed(LocalOptions, cfg["local"], "target.local")
  return LocalTarget(load_model(cfg), chat=o.chat, batch_size=o.batch_size,
                     length_multiple=o.length_multiple, mesh=mesh,
                     reload=lambda: load_model(cfg))


def _http(cfg: Mapping[str, Any], mesh):
  del mesh
  o = typed(HttpOptions, cfg["http"], "target.http")
  return HttpTarget(o.base_url or os.environ.get("OPENAI_BASE_URL", ""), o.model or cfg["name"],
                    api_key_env=o.api_key_env, scoring=o.scoring, concurrency=o.concurrency,
                    max_retries=o.max_retries, timeout_s=o.timeout_s, backoff_s=o.backoff_s)


BACKENDS = {"local": _local, "http": _http}


def build_target(cfg: Mapping[str, Any], mesh=None) -> Target:
  """The target a config's `target` section describes (fields: configs/base.py)."""
  backend = cfg["backend"]
  if backend not in BACKENDS:
    raise ValueError(f"target.backend={backend!r} is not one of {sorted(BACKENDS)}")
  return BACKENDS[backend](cfg, mesh)


__all__ = ["BACKENDS", "Generation", "HttpOptions", "HttpTarget", "LocalOptions", "LocalTarget",
           "Target", "TargetError", "build_target"]
