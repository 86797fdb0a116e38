"""A task declared in a YAML or JSON file (`task.file`): a new label set, template or data
without writing Python. Every mode uses it as it uses a registered task.

  name: review_sentiment
  kind: choice                     # choice (options) or math (a numeric answer)
  fields: {text: Review}           # our field: its label in the template, in order
  answer: Sentiment                # choice: the line the target completes
  options: [Negative, Positive]    # choice: the labels (omit for per-row options:
                                   #   the `options` column holds each row's answer texts)
  label: label                     # choice: the column with the gold label (an index,
                                   #   a digit string or an option's text); math: the
                                   #   column with the gold number (default: answer)
  columns: {text: review_body}     # optional: our field <- its column (default: the same name)
  manual_prompt: Is the review Negative or Positive?
  data: {format: jsonl, dir: ., files: {train: train.jsonl, test: test.jsonl}}
  splits:                          # optional; this is the default when the file has a test
    train: [train, 0.0, 0.8]       #   source split: [source split, start, stop] after a
    collect: [train, 0.8, 0.9]     #   seeded shuffle (task.seed)
    validation: [train, 0.9, 1.0]
    test: [test, 0.0, 1.0]
  prompts: {manual: [Is the review Negative or Positive?, "Answer with one word."]}

`data` is the `task.data` section's defaults (dir relative to the file; the config's
`task.data` fields still override); the source prompts come from `prompts` unless
`offline.prompts_dir` names a collection. Every mistake is a ValueError naming the file and
the key.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import yaml

from qpo_jax.tasks.base import CHOICE, MATH, Example, SplitRule, Task, parse_number

DEFAULT_SPLITS = {"train": ("train", 0.0, 0.8), "collect": ("train", 0.8, 0.9),
                  "validation": ("train", 0.9, 1.0), "test": ("test", 0.0, 1.0)}
KEYS = {"name", "kind", "fields", "answer", "options", "label", "columns", "manual_prompt",
        "data", "splits", "prompts"}


def _read(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    raise ValueError(f"task.file={path!r} is not a file")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  try:
    spec = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
  except (ValueError, yaml.YAMLError) as e:
    raise ValueError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                     f"{e}") from None
  if not isinstance(spec, dict):
    raise ValueError(f"{path}: expected a mapping of task keys ({sorted(KEYS)})")
  unknown = sorted(set(spec) - KEYS)
  if unknown:
    raise ValueError(f"{path}: unknown keys {unknown}; a task file takes {sorted(KEYS)}")
  return spec


def _strings(value: Any, what: str, path: str) -> list[str]:
  if not isinstance(value, list) or not value or not all(
      isinstance(v, str) and v.strip() for v in value):
    raise ValueError(f"{path}: {what} must be a non-empty list of non-empty strings")
  return list(value)


def _label(value: Any, options: tuple[str, ...]) -> int:
  """An option index (a whole number or digit string) or an option's text (any case)."""
  if isinstance(value, str) and not value.strip().isdigit():
    by_text = {o.strip().lower(): i for i, o in enumerate(options)}
    if value.strip().lower() not in by_text:
      raise ValueError(f"label {value!r} is not one of the options {list(options)}")
    return by_text[value.strip().lower()]
  if isinstance(value, bool) or float(value) != int(float(value)):
    raise ValueError(f"label {value!r} is not a whole number or an option's text")
  index = int(float(value))
  if not 0 <= index < len(options):
    raise ValueError(f"label {value!r} is outside 0..{len(options) - 1}")
  return index


def load_task(path: str) -> Task:
  """The Task a file declares (module docstring)."""
  path = os.path.abspath(os.path.expanduser(path))
  spec = _read(path)
  for key in ("name", "kind", "fields"):
    if key not in spec:
      raise ValueError(f"{path}: missing key {key!r}")
  name, kind = str(spec["name"]), spec["kind"]
  if kind not in (CHOICE, MATH):
    raise ValueError(f"{path}: kind {kind!r} is not {CHOICE!r} or {MATH!r}")
  fields = spec["fields"]
  if not isinstance(fields, dict) or not fields or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
    raise ValueError(f"{path}: fields must map each field to its template label")
  columns = {k: str(spec.get("columns", {}).get(k, k)) for k in fields}
  options = tuple(_strings(spec["options"], "options", path)) if "options" in spec else ()
  if kind == CHOICE and "answer" not in spec:
    raise ValueError(f"{path}: a choice task needs `answer`, the template line it completes")
  label_column = str(spec.get("label", "label" if kind == CHOICE else "answer"))

  def to_example(row: Mapping[str, Any], uid: str) -> Example:
    texts = {}
    for key, column in columns.items():
      value = row[column]
      if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column {column!r} is {value!r}, not text")
      texts[key] = " ".join(value.split())
    if kind == MATH:
      return Example(uid, texts, answer=parse_number(row[label_column], name))
    if options:
      return Example(uid, texts, label=_label(row[label_column], options))
    own = row["options"]
    if not isinstance(own, list) or len(own) < 2 or not all(isinstance(o, str) for o in own):
      raise ValueError(f"options {own!r} is not a list of at least two answer texts")
    return Example(uid, texts, label=_label(row[label_column], tuple(own)), options=tuple(own))

  data = dict(spec.get("data") or {})
  data["dir"] = os.path.join(os.path.dirname(path), data.get("dir") or ".")
  data.setdefault("format", "auto")
  splits = dict(DEFAULT_SPLITS)
  for split, rule in (spec.get("splits") or {}).items():
    if split not in DEFAULT_SPLITS or not (isinstance(rule, list) and len(rule) == 3):
      raise ValueError(f"{path}: splits.{split} must be one of {sorted(DEFAULT_SPLITS)} "
                       "given as [source split, start, stop]")
    splits[split] = (str(rule[0]), float(rule[1]), float(rule[2]))
  prompts = spec.get("prompts") or {}
  if not isinstance(prompts, dict) or not all(
      isinstance(ps, list) and ps and all(isinstance(p, str) for p in ps)
      for ps in prompts.values()):
    raise ValueError(f"{path}: prompts must map a source name to a list of prompts (\"\" is "
                     "the empty instruction)")
  return Task(name=name, kind=kind, field_names=tuple(fields.items()),
              answer_name=str(spec.get("answer", "")), verbalizers=options,
              splits={k: SplitRule(*v) for k, v in splits.items()}, to_example=to_example,
              manual_prompt=str(spec.get("manual_prompt", "")), file_defaults=data,
              source_prompts={s: tuple(ps) for s, ps in prompts.items()})
