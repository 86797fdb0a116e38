"""The range of every number in a config, checked before any mode loads a model or writes.

`RULES` names a rule for each numeric field of configs/base.py (a test walks the
schema and fails on a numeric field without one, so a new field cannot be left
unchecked); `check` applies them and raises naming the field, its value and what it
must be. Fields that may be unset (None) are checked only when set.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping

import ml_collections

from qpo_jax.utils import config_module, configs_dir


def _number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
  return _number(v) and float(v).is_integer()


# name -> (test, what the value must be)
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: _number(v) and v > 0, "a positive number"),
    "positive_int": (lambda v: _whole(v) and v > 0, "a positive whole number"),
    "count": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "non_negative": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "seed": (lambda v: _whole(v) and 0 <= v < 2**32, "a whole number in 0 .. 2**32 - 1"),
    "fraction": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "unit": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "mesh_axis": (lambda v: _whole(v) and (v == -1 or v > 0), "a positive whole number or -1"),
    "port": (lambda v: _whole(v) and 0 <= v <= 65535, "a port number (0: any free one)"),
    "round": (lambda v: _whole(v) and v >= 0, "a round number (0: the last finished)"),
    "any": (_number, "a number"),
}

RULES: dict[str, str] = {
    "seed": "seed", "round": "round",
    "mesh.data": "mesh_axis", "mesh.fsdp": "mesh_axis", "mesh.tensor": "mesh_axis",
    "target.seed": "seed", "target.batch_size": "positive_int",
    "target.length_multiple": "positive_int", "target.concurrency": "positive_int",
    "target.max_retries": "count", "target.timeout_s": "positive", "target.backoff_s": "non_negative",
    "task.seed": "seed", "task.max_words": "positive_int", "task.data.size": "positive_int",
    "task.data.seed": "seed", "task.data.label_base": "count",
    "data.num_queries": "count", "data.num_demo_sets": "positive_int",
    "data.num_demos": "positive_int", "data.threshold": "any", "data.top_fraction": "fraction",
    "data.prompts_per_query": "count", "data.max_bad_fraction": "unit",
    "data.prompts_per_chunk": "positive_int", "data.records_per_shard": "positive_int",
    "data.max_new_tokens": "positive_int",
    "policy.seed": "seed", "policy.lora_rank": "count", "policy.lora_alpha": "positive",
    "train.learning_rate": "positive", "train.epochs": "positive",
    "train.decay_every_epochs": "positive", "train.decay_rate": "fraction",
    "train.warmup_steps": "count", "train.batch_size": "positive_int",
    "train.grad_accum": "positive_int", "train.grad_clip": "positive",
    "train.pad_multiple": "positive_int", "train.weight_decay": "non_negative",
    "train.query_len": "positive_int", "train.prompt_len": "positive_int",
    "train.finetune_lr": "non_negative", "train.finetune_epochs": "non_negative",
    "train.log_every": "positive_int", "train.checkpoint_every": "positive_int",
    "sample.target_return": "any", "sample.num_samples": "positive_int",
    "sample.batch_size": "positive_int", "sample.test.temperature": "non_negative",
    "sample.test.top_k": "count", "sample.test.top_p": "fraction",
    "sample.collect.temperature": "non_negative", "sample.collect.top_k": "count",
    "sample.collect.top_p": "fraction",
    "loop.num_loops": "positive_int", "loop.collect_batches": "positive_int",
    "loop.collect_queries": "positive_int", "loop.parents": "count", "loop.rewrites": "count",
    "loop.edits": "count", "loop.junk_quantile": "fraction", "loop.max_screen": "positive_int",
    "loop.screen_queries": "positive_int", "loop.new_prompts": "positive_int",
    "loop.prompt_queries": "count",
    "eval.num_queries": "positive_int", "eval.num_demo_sets": "positive_int",
    "eval.num_demos": "positive_int", "eval.max_new_tokens": "positive_int",
    "eval.validation_queries": "count", "eval.purity_queries": "count", "eval.best_of_n": "count",
    "eval_prompts.num_queries": "positive_int", "eval_prompts.num_demo_sets": "positive_int",
    "eval_prompts.num_demos": "positive_int", "eval_prompts.max_new_tokens": "positive_int",
    "serve.port": "port", "serve.max_tokens": "positive_int", "serve.max_body_bytes": "positive_int",
    "serve.request_timeout_s": "positive", "serve.max_prompt_tokens": "positive_int",
    "serve.chunk_tokens": "positive_int",
    "optimize.num_samples": "count", "optimize.batch_size": "positive_int",
    "generate.max_new_tokens": "positive_int", "generate.batch_size": "positive_int",
}


def leaves(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Every field of a config as 'section.field' -> value (nested sections flattened)."""
  out: dict[str, Any] = {}
  for k, v in node.items():
    if isinstance(v, Mapping):
      out.update(leaves(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# fields whose value is a mapping (or a list) of the user's keys, compared as one field
_VALUES = ("task.data.files", "task.data.splits", "task.data.columns")


def fields(config: Mapping[str, Any]) -> set[str]:
  """The config's field names, 'section.field' (a `_VALUES` field is one name)."""
  return {next((v for v in _VALUES if k == v or k.startswith(v + ".")), k)
          for k in leaves(config)}


@functools.cache
def _base_fields() -> frozenset[str]:
  return frozenset(fields(config_module(os.path.join(configs_dir(), "base.py")).get_config()
                          .to_dict()))


def schema_problem(config: Mapping[str, Any]) -> str | None:
  """What makes `config`'s fields differ from configs/base.py's, or None.

  A section assigned whole (`c.target = dict(name=...)`) replaces every field of it,
  silently dropping the ones not given; `c.target.update(name=...)` keeps them.
  """
  have = fields(config)
  missing, extra = sorted(_base_fields() - have), sorted(have - _base_fields())
  if not missing and not extra:
    return None
  sections = sorted({k.rsplit(".", 1)[0] for k in missing + extra if "." in k})
  return ("the config's fields differ from configs/base.py's"
          + (f"; missing: {', '.join(missing)}" if missing else "")
          + (f"; unknown: {', '.join(extra)}" if extra else "")
          + (f". Was a section replaced whole (c.{sections[0]} = dict(...))? Set its fields "
             f"with c.{sections[0]}.update(...) instead" if sections else ""))


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError on fields that differ from base.py's, else naming the first field
  whose value breaks its rule."""
  values = leaves(config.to_dict())
  if problem := schema_problem(config.to_dict()):
    raise ValueError(problem)
  for name, kind in RULES.items():
    if name not in values:
      raise ValueError(f"the config has no field {name} (every config has the same fields; "
                       "see configs/base.py)")
    value = values[name]
    test, what = KINDS[kind]
    if value is not None and not test(value):
      raise ValueError(f"{name}={value!r} must be {what} (--config.{name}=...)")
