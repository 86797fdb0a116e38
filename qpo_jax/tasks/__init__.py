"""Task registry: `task.name` in a config picks an entry of `TASKS`.

A config's `task` section:
  name      registry key ("tweet_emotion", "gsm8k", "topics", ...)
  seed      seed of the split shuffle (fixed per task; the spec's splits are random)
  max_words queries and demonstrations are cut to this many words (spec: 100)
  data      where rows come from: kind="files" | "tfds" | "builtin", plus that
            kind's fields (sources.py); the task's defaults fill what is not set.
  split_rules  {split: "source[lo%:hi%]"} in place of the task's own rules (None: its own)
Adding a task means adding one function returning a `Task` and a line here, or
declaring it in a YAML/JSON file (`task.file`, tasks/declared.py) without code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from qpo_jax.tasks import builtin, declared, paper, sources
from qpo_jax.tasks.base import CHOICE, MATH, Example, Task, parse_split_rule, split_rows

TASKS: dict[str, Callable[[], Task]] = {
    "ag_news": paper.ag_news,
    "imdb": paper.imdb,
    "tweet_emotion": paper.tweet_emotion,
    "boolq": paper.boolq,
    "cosmos_qa": paper.cosmos_qa,
    "hellaswag": paper.hellaswag,
    "gsm8k": paper.gsm8k,
    "svamp": paper.svamp,
    "arithmetic": builtin.arithmetic,
    "topics": builtin.topics,
}

# validation: for choosing settings; never in D_0, never collected, never the final report's
SPLITS = ("train", "collect", "validation", "test")
MAPS = ("files", "splits")  # task.data fields keyed by source split


def set_entries(given: Mapping[str, Any] | None) -> dict[str, Any]:
  """The entries of a config mapping that are set: an entry None or "" leaves the default."""
  return {k: v for k, v in (given or {}).items() if v not in (None, "")}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"task.name={name!r} is not one of {sorted(TASKS)} (or declare your "
                     "own in a file: task.file)")
  return TASKS[name]()


def task_of(task_cfg: Mapping[str, Any]) -> Task:
  """The task a config's `task` section names: declared in `task.file` (tasks/declared.py),
  else the registry's `task.name`; with the split rules `task.split_rules` sets."""
  task = declared.load_task(task_cfg["file"]) if task_cfg.get("file") else \
      get_task(task_cfg["name"])
  return with_split_rules(task, task_cfg.get("split_rules"))


def with_split_rules(task: Task, given: Mapping[str, str | None] | None) -> Task:
  """The task with the rules `given` ({split: 'source[lo%:hi%]'}, unset entries None) in
  place of its own: a data layout whose source splits are smaller than the spec's (Cosmos
  QA with its valid split alone) can keep enough validation rows."""
  given = set_entries(given)
  if not given:
    return task
  sources = sorted({r.source for r in task.splits.values()}
                   | set((task.file_defaults.get("files") or {}))
                   | set((task.tfds_defaults.get("splits") or {})))
  rules = dict(task.splits)
  for split, text in given.items():
    field = f"task.split_rules.{split}"
    if split not in SPLITS:
      raise ValueError(f"{field}: {split!r} is not one of the splits {list(SPLITS)}")
    rules[split] = parse_split_rule(text, field)
    if rules[split].source not in sources:
      raise ValueError(f"{field}={text!r}: task {task.name!r} has no source split "
                       f"{rules[split].source!r}; its source splits: {sources}")
  return dataclasses.replace(task, splits=rules)


def data_spec(task: Task, data: Mapping[str, Any] | None) -> dict:
  """The task's defaults for the chosen kind, overridden by the config's `data` fields."""
  data = dict(data or {})
  kind = data.get("kind") or ("builtin" if task.builtin_rows else "files")
  defaults = {"files": task.file_defaults, "tfds": task.tfds_defaults}.get(kind, {})
  if kind == "tfds" and not defaults and not data.get("name"):
    raise ValueError(f"task {task.name!r} has no tensorflow-datasets builder; use data.kind='files'")
  if kind == "builtin" and task.builtin_rows is None:
    raise ValueError(f"task {task.name!r} is not built in; set data.kind to 'files' or 'tfds'")
  spec = {**defaults, **{k: v for k, v in set_entries(data).items() if k not in MAPS}}
  for k in MAPS:  # {source split: ...}: each split the config sets replaces the default's
    given = set_entries(data.get(k))
    read = sorted({rule.source for rule in task.splits.values()})
    if unknown := sorted(set(given) - set(read)):
      raise ValueError(f"task.data.{k} names {unknown}, which task {task.name!r} does not "
                       f"read; its source splits: {read}")
    if given:
      spec[k] = {**(defaults.get(k) or {}), **given}
  spec["kind"] = kind
  return spec


def load_source(task: Task, spec: Mapping[str, Any], source: str) -> list[Example]:
  if spec["kind"] == "builtin":
    rows = task.builtin_rows(int(spec.get("size", 800)), int(spec.get("seed", 0)))
    return list(sources.to_examples(task, rows, f"built-in {task.name}", source))
  return sources.load_split(task, spec, source)


def unique_texts(rows: list[Example]) -> list[Example]:
  """The rows with the first occurrence of each query text only."""
  seen: set[str] = set()
  out = []
  for ex in rows:
    if ex.query not in seen:
      seen.add(ex.query)
      out.append(ex)
  return out


def load_splits(task_cfg: Mapping[str, Any], which: tuple[str, ...] = SPLITS
                ) -> tuple[Task, dict[str, list[Example]]]:
  """The task and its train / collect / test examples as the spec's split rules cut them.

  Texts are deduplicated before splitting, and across splits a text belongs to
  the last of train < collect < validation < test that has it, so no test query
  is trained on, collected or validated on, no validation query is in D_0 or
  collected, and no collect query is in D_0.
  """
  task = task_of(task_cfg)
  spec = data_spec(task, task_cfg["data"])
  seed = int(task_cfg["seed"])
  loaded: dict[str, list[Example]] = {}
  splits = {}
  for split in SPLITS:
    rule = task.splits[split]
    if rule.source not in loaded:
      loaded[rule.source] = unique_texts(load_source(task, spec, rule.source))
    splits[split] = split_rows(loaded[rule.source], rule, seed)
  later: set[str] = set()
  for split in reversed(SPLITS):
    splits[split] = [ex for ex in splits[split] if ex.query not in later]
    later.update(ex.query for ex in splits[split])
  return task, {split: splits[split] for split in which}


__all__ = ["CHOICE", "MATH", "Example", "Task", "TASKS", "get_task", "task_of", "load_splits",
           "data_spec"]
