"""What a task is: examples, how a (query, prompt, demos) is written for the target, splits.

A `Task` is data plus a few small functions, so the eight paper tasks and the
built-in ones are all instances of the same two kinds:

* "choice": classification and multiple choice. The target scores every
  option (verbalizer or answer text) after the rendered prompt; the option
  with the lowest mean NLL is the prediction.
* "math": the target writes a solution; the answer is the number after
  "Final Answer:" (else the last number), compared numerically.

Rendering follows the layout of the QPO/InstructEval templates: instruction
first, then the demonstrations, then the query, each as "Field: value" lines,
ending with the answer field left open ("Emotion:").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

CHOICE, MATH = "choice", "math"


@dataclasses.dataclass(frozen=True)
class Example:
  """One query with its gold answer.

  `fields` are the texts the template shows (e.g. {"text": ...} or
  {"passage": ..., "question": ...}); `label` indexes `options` for choice
  tasks; `answer` is the gold number for math; `solution` a worked solution
  (math demonstrations); `uid` is stable across runs (source split + row).
  """

  uid: str
  fields: Mapping[str, str]
  label: int | None = None
  options: tuple[str, ...] = ()
  answer: float | None = None
  solution: str = ""

  @property
  def query(self) -> str:
    """The query as one string (what the policy reads and the offline logs store)."""
    return "\n".join(self.fields[k] for k in self.fields)


@dataclasses.dataclass(frozen=True)
class SplitRule:
  """A split is rows [start, stop) (as fractions) of a source split after a seeded shuffle."""

  source: str
  start: float = 0.0
  stop: float = 1.0


_RULE = re.compile(r"^(?P<source>\w+)(?:\[(?P<lo>[^:\]]*):(?P<hi>[^:\]]*)\])?$")


def parse_split_rule(text: str, field: str) -> SplitRule:
  """A split rule written as a config value: 'source' (all of it) or 'source[lo%:hi%]',
  percentages of the source split after its seeded shuffle ('validation[:10%]')."""
  m = _RULE.match(str(text).strip())

  def bound(b: str | None, default: float) -> float | None:
    if not b:
      return default
    if not b.endswith("%"):
      return None
    try:
      return float(b[:-1]) / 100
    except ValueError:
      return None

  lo, hi = (bound(m["lo"], 0.0), bound(m["hi"], 1.0)) if m else (None, None)
  if lo is None or hi is None or not 0 <= lo < hi <= 1:
    raise ValueError(f"{field}={text!r} must be a source split, optionally with a range in "
                     "percent of it: 'train', 'validation[:10%]', 'train[90%:95%]' (0 <= lo < hi "
                     "<= 100)")
  return SplitRule(m["source"], lo, hi)


@dataclasses.dataclass(frozen=True)
class Task:
  """A task of the registry; see the module docstring."""

  name: str
  kind: str
  field_names: tuple[tuple[str, str], ...]  # (key in Example.fields, label in the template)
  answer_name: str  # the open field the target completes ("Emotion", "Answer")
  splits: Mapping[str, SplitRule]
  to_example: Callable[[Mapping[str, Any], str], Example]
  verbalizers: tuple[str, ...] = ()  # fixed options of classification tasks
  manual_prompt: str = ""
  # Defaults of the `data` config section per kind (see sources.py); the config overrides them.
  file_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  tfds_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Built-in tasks: rows(size, seed) -> list of raw rows for the single source split "all".
  builtin_rows: Callable[[int, int], list[dict]] | None = None
  # Source prompt collections shipped with the task {source: prompts} (built-in tasks).
  source_prompts: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  def options(self, ex: Example) -> tuple[str, ...]:
    return ex.options or self.verbalizers

  def block(self, ex: Example, with_answer: bool) -> str:
    lines = [f"{label}: {ex.fields[key]}" for key, label in self.field_names]
    if self.kind == MATH:
      text = "\n".join(ex.fields[key] for key, _ in self.field_names)
      return text + (f"\n{ex.solution.strip()}\nFinal Answer: {format_number(ex.answer)}"
                     if with_answer else "")
    answer = f" {self.options(ex)[ex.label]}" if with_answer else ""
    return "\n".join(lines + [f"{self.answer_name}:{answer}"])

  def render(self, ex: Example, instruction: str, demos: Sequence[Example] = ()) -> str:
    """The user text sent to the target: instruction, demonstrations, the open query.

    For math the prompt follows the query (spec: "query + newline + prompt").
    """
    demo_text = "\n\n".join(self.block(d, with_answer=True) for d in demos)
    if self.kind == MATH:
      parts = [demo_text, self.block(ex, with_answer=False) + ("\n" + instruction if instruction
                                                                else ""),
               "End your response with 'Final Answer: <number>'."]
    else:
      parts = [instruction, demo_text, self.block(ex, with_answer=False)]
    return "\n\n".join(p for p in parts if p)


def truncate_words(text: str, max_words: int) -> str:
  """Keeps the first `max_words` whitespace-separated words (spec: texts cut to 100 words)."""
  if max_words <= 0:
    return text
  words = text.split()
  return text if len(words) <= max_words else " ".join(words[:max_words])


def truncated(ex: Example, max_words: int) -> Example:
  fields = {k: truncate_words(v, max_words) for k, v in ex.fields.items()}
  return dataclasses.replace(ex, fields=fields)


def split_rows(rows: Sequence[Example], rule: SplitRule, seed: int) -> list[Example]:
  """Rows [start, stop) of the seeded permutation of a source split (disjoint for disjoint ranges)."""
  order = np.random.default_rng(seed).permutation(len(rows))
  lo, hi = int(round(rule.start * len(rows))), int(round(rule.stop * len(rows)))
  return [rows[i] for i in order[lo:hi]]


def sample_queries(rows: Sequence[Example], n: int, seed: int, balanced: bool = True,
                   max_words: int = 100) -> list[Example]:
  """`n` queries (all if fewer), class-balanced for choice tasks, texts truncated.

  Balanced: round-robin over labels in a seeded order, so each class gets
  n // C (the remainder goes to the first classes that still have rows).
  """
  rng = np.random.default_rng(seed)
  order = [rows[i] for i in rng.permutation(len(rows))]
  if balanced and order and order[0].label is not None:
    by_label: dict[int, list[Example]] = {}
    for ex in order:
      by_label.setdefault(ex.label, []).append(ex)
    picked, queues = [], [by_label[k] for k in sorted(by_label)]
    while len(picked) < n and any(queues):
      for q in queues:
        if q and len(picked) < n:
          picked.append(q.pop(0))
    order = picked
  return [truncated(ex, max_words) for ex in order[:n]]


def demo_sets(train: Sequence[Example], k: int, n: int, seed: int,
              max_words: int = 100) -> list[tuple[Example, ...]]:
  """K demonstration sets of n demos each, drawn without replacement within a set."""
  rng = np.random.default_rng(seed)
  if n > len(train):
    raise ValueError(f"{n} demonstrations requested but the train split has {len(train)} rows")
  return [tuple(truncated(train[i], max_words) for i in rng.choice(len(train), n, replace=False))
          for _ in range(k)]


def demos_id(demos: Sequence[Example]) -> str:
  """A short stable id of a demonstration set (part of the evaluation cache key)."""
  return hashlib.sha256(json.dumps([d.uid for d in demos]).encode()).hexdigest()[:16]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_FINAL = re.compile(r"final answer\s*(?:is)?\s*[:=]?\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)


def extract_answer(response: str) -> float | None:
  """The number after "Final Answer:" if present, else the last number in the response."""
  m = _FINAL.findall(response)
  candidates = m if m else _NUMBER.findall(response)
  for text in reversed(candidates):
    try:
      return float(text.replace(",", "").rstrip("."))
    except ValueError:
      continue
  return None


def numbers_equal(a: float | None, b: float | None, rel: float = 1e-6) -> bool:
  if a is None or b is None:
    return False
  return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def format_number(x: float | None) -> str:
  if x is None:
    return ""
  return str(int(x)) if float(x).is_integer() else f"{x:g}"


def parse_number(text: Any, where: str) -> float:
  """A gold answer from a file ("1,234", "72", 5.0); the error names the record."""
  try:
    return float(str(text).replace(",", "").strip())
  except ValueError:
    raise ValueError(f"{where}: gold answer {text!r} is not a number") from None
