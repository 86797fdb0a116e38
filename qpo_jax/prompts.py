"""The source prompts of a run: from the config, a prompts file, a collection, or the task.

Below both the loop (D_0 is built on them) and the report (they are its baselines).
"""

from __future__ import annotations

from typing import Any, Mapping

from qpo_jax.store import importers
from qpo_jax.tasks.sources import read_json_list


def source_prompts(offline: Mapping[str, Any], task) -> list[tuple[str, str]]:
  """(source, prompt) pairs from a config's `offline` section: prompts_file (a JSON list),
  else the collection in prompts_dir, else the task's own collections, else manual + none."""
  d = offline
  if d["prompts_file"]:  # a JSON list of prompts, named by aliases_file (Prompt-OIRL's)
    prompts = read_json_list(d["prompts_file"])
    names = (read_json_list(d["aliases_file"]) if d["aliases_file"]
             else ["file"] * len(prompts))
    keep = set(d["prompt_sources"])
    return [(n, p) for n, p in zip(names, prompts) if not keep or n in keep]
  if d["prompts_dir"]:
    found = importers.load_prompt_collection(d["prompts_dir"], task.name,
                                             list(d["prompt_sources"]) or None,
                                             d["lp_model"] or None)
    return [(src, p) for src, ps in found.items() for p in ps]
  if task.source_prompts:
    return [(src, p) for src, ps in task.source_prompts.items() for p in ps]
  return [("manual", task.manual_prompt), ("none", "")]
