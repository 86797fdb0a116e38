"""Target LLM backends by config: `target.backend` is "local" (JAX) or "http" (OpenAI API).

Both expose `identity` (the evaluation-cache key part), `score_options(user_texts,
options) -> ([N, K] mean NLL, prompt tokens)` and `generate(user_texts,
max_new_tokens) -> [Generation]`; the evaluation code uses nothing else.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Protocol, Sequence

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


def _local(cfg: Mapping[str, Any], mesh):
  from qpo_jax.checkpoints.registry import load_model  # pylint: disable=g-import-not-at-top

  return LocalTarget(load_model(cfg), chat=bool(cfg["chat"]),
                     batch_size=int(cfg["batch_size"]),
                     length_multiple=int(cfg["length_multiple"]), mesh=mesh,
                     reload=lambda: load_model(cfg))


def _http(cfg: Mapping[str, Any], mesh):
  del mesh
  return HttpTarget(cfg["base_url"] or os.environ.get("OPENAI_BASE_URL", ""),
                    cfg["model"] or cfg["name"],
                    api_key_env=cfg["api_key_env"],
                    scoring=cfg["scoring"],
                    concurrency=int(cfg["concurrency"]),
                    max_retries=int(cfg["max_retries"]),
                    timeout_s=float(cfg["timeout_s"]),
                    backoff_s=float(cfg["backoff_s"]))


BACKENDS = {"local": _local, "http": _http}


def run_target(config) -> Target:
  """The target of a run: `config.target` on the mesh `config.mesh` describes."""
  from qpo_jax import sharding  # pylint: disable=g-import-not-at-top

  return build_target(config.target, mesh=sharding.make_mesh(config.mesh))


def build_target(cfg: Mapping[str, Any], mesh=None) -> Target:
  """The target a config's `target` section describes (fields: configs/base.py)."""
  backend = cfg["backend"]
  if backend not in BACKENDS:
    raise ValueError(f"target.backend={backend!r} is not one of {sorted(BACKENDS)}")
  return BACKENDS[backend](cfg, mesh)


__all__ = ["BACKENDS", "Generation", "HttpTarget", "LocalTarget", "Target", "TargetError",
           "build_target", "run_target"]
