"""`--mode=optimize`: a trained policy's prompts for your own queries, written as JSONL.

Input: a .jsonl file (one object per line), a .csv file with a header row, or a
.txt file (one query per line). A single-field task (tweet_emotion, ag_news,
imdb, the math tasks) reads the query from `optimize.field`; a task with
several fields (boolq, cosmos_qa, hellaswag) reads each of its fields by name
(and `options` for per-query answer options). A bad row (invalid JSON or CSV, a line
that is not UTF-8, a field missing or not text) is reported with file and line
and skipped; the count is
printed at the end.

Output: one JSON object per input row, in input order: its `line`, the query's
`fields`, the `prompt` (greedy, or the first of `prompts` when
`optimize.num_samples` draws N with the collection sampler) and, with
`optimize.answer`, the target's `answer` for each prompt (through the workdir's
evaluation cache, so a rerun costs nothing). Rows are appended batch by batch
and fsynced; a rerun continues at the first row that is not there (a line cut
by a kill is dropped and redone; an output file that holds anything else, a last
line without its newline included, is refused and left as it is), and sampled prompts do not depend on where
a run was cut.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from typing import Any, Iterator

from absl import logging
import numpy as np

from qpo_jax import evaluation, rounds
from qpo_jax.context import Run
from qpo_jax.eval_cache import EvalCache
from qpo_jax.targets import Target
from qpo_jax.tasks import CHOICE, Example, Task
from qpo_jax.utils import progress_bar


_LINE = "__text__"  # a .txt row's one field
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
OWN_ROW_START = b'{"line": '  # how every output row begins (json.dumps of `rec` below)


@dataclasses.dataclass(frozen=True)
class Row:
  line: int  # 1-based line of the input file
  example: Example


def _fields(task: Task, raw: dict[str, Any], field: str) -> dict[str, str]:
  keys = [k for k, _ in task.field_names]
  if len(keys) == 1:
    names = {keys[0]: field}
  else:
    names = {k: k for k in keys}
  out = {}
  for ours, theirs in names.items():
    value = raw.get(theirs)
    if not isinstance(value, str) or not value.strip():
      raise ValueError(f"field {theirs!r} is missing, empty or not text (has {sorted(raw)})")
    control = _CONTROL.search(value)
    if control:  # a binary file's lines can decode as UTF-8
      shown = "the line" if theirs == _LINE else f"field {theirs!r}"
      raise ValueError(f"{shown} is not text (control character {ord(control.group()):#04x})")
    out[ours] = value.strip()
  return out


def _text_lines(path: str) -> Iterator[tuple[int, str | Exception]]:
  """(line number, text or the error decoding it) of every line: a line that is not UTF-8
  is one bad row, not the end of the file."""
  with open(path, "rb") as f:
    for line, raw in enumerate(f, 1):
      try:
        yield line, raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield line, ValueError(f"not UTF-8 text (byte {e.start + 1} of the line is "
                               f"{raw[e.start]:#04x})")


def _raw_rows(path: str) -> Iterator[tuple[int, Any]]:
  """(line, raw row or the Exception that reading it raised) for every data line."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".csv", ".jsonl", ".json", ".txt"):
    raise ValueError(f"optimize.input={path!r}: use a .jsonl, .csv or .txt file")
  lines = _text_lines(path)
  if ext == ".csv":  # records may span lines: the reader takes the decodable ones
    numbers: list[int] = []
    undecodable: list[tuple[int, Exception]] = []

    def decoded():
      for line, text in lines:
        if isinstance(text, Exception):
          undecodable.append((line, text))
        else:
          numbers.append(line)
          yield text

    reader = csv.DictReader(decoded())
    try:
      for row in reader:
        yield from undecodable
        undecodable.clear()
        if None in row:  # more cells than the header names
          yield numbers[reader.line_num - 1], ValueError(
              f"{len(row[None])} more cells than the header's {len(reader.fieldnames)} columns")
        else:
          yield numbers[reader.line_num - 1], row
    except csv.Error as e:
      yield numbers[reader.line_num - 1] if numbers else 1, ValueError(f"not CSV: {e}")
    yield from undecodable
    return
  for line, text in lines:
    if isinstance(text, Exception):
      yield line, text
    elif text.strip():
      if ext == ".txt":
        yield line, {_LINE: text.rstrip("\r\n")}
      else:
        try:
          yield line, json.loads(text)
        except ValueError as e:
          yield line, ValueError(f"not JSON: {e}")


def read_queries(task: Task, path: str, field: str) -> tuple[list[Row], list[str]]:
  """The good rows of `path` as Examples, and one message per bad row (file:line: why)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"optimize.input={path!r} is not a file")
  txt = path.lower().endswith(".txt")
  if txt and len(task.field_names) > 1:
    raise ValueError(f"optimize.input={path!r}: task {task.name!r} has several fields "
                     f"{[k for k, _ in task.field_names]}; give them in a .jsonl or .csv file")
  rows, bad = [], []
  for line, raw in _raw_rows(path):
    try:
      if isinstance(raw, Exception):
        raise raw
      if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
      fields = _fields(task, raw, _LINE if txt else field)
      options = ()
      if task.kind == CHOICE and not task.verbalizers:
        options = raw.get("options")
        if not isinstance(options, list) or not options or \
            not all(isinstance(o, str) for o in options):
          raise ValueError("this task needs 'options', a list of answer texts")
        options = tuple(options)
      rows.append(Row(line, Example(uid=f"{os.path.basename(path)}:{line}", fields=fields,
                                    options=options)))
    except ValueError as e:
      bad.append(f"{path}:{line}: {e}")
  return rows, bad


def _done_rows(path: str) -> dict[int, dict[str, str]]:
  """{input line: query fields} already written to the output; a last line cut by a kill is
  removed. A file this mode did not write is refused, never changed."""
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    data = f.read()
  keep = data[:data.rfind(b"\n") + 1]
  tail = data[len(keep):]

  def foreign(line: int) -> ValueError:
    return ValueError(f"{path}:{line}: not a row that --mode=optimize wrote; set "
                      "optimize.output to a new file (this one is left as it is)")

  done = {}
  for i, text in enumerate(keep.decode("utf-8", errors="replace").splitlines(), 1):
    try:
      row = json.loads(text)
      if not isinstance(row, dict) or "prompt" not in row:
        raise ValueError(text)
      done[int(row["line"])] = dict(row["fields"])
    except (ValueError, KeyError, TypeError):
      raise foreign(i) from None
  if tail and not (tail.startswith(OWN_ROW_START) or OWN_ROW_START.startswith(tail)):
    raise foreign(keep.count(b"\n") + 1)  # a last line without its newline, not ours
  if len(keep) != len(data):
    logging.warning("%s: dropping a last line cut short (%d bytes)", path, len(data) - len(keep))
    with open(path, "r+b") as f:
      f.truncate(len(keep))
  return done


def _contiguous(batch: list[Row], index: dict[int, int]) -> Iterator[list[Row]]:
  """The batch cut into spans of consecutive input rows."""
  span: list[Row] = []
  for r in batch:
    if span and index[r.line] != index[span[-1].line] + 1:
      yield span
      span = []
    span.append(r)
  if span:
    yield span


def answers(task: Task, target: Target, pairs: list[tuple[Example, str]], cache: EvalCache,
             max_new_tokens: int) -> list[str]:
  """The target's answer for each (query, prompt): its likeliest option, or its response."""
  raw = evaluation.raw_results(task, target, pairs, cache=cache, max_new_tokens=max_new_tokens)
  if task.kind == CHOICE:
    return [task.options(ex)[int(np.argmin(r["nll"]))] for (ex, _), r in zip(pairs, raw)]
  return [r["response"] for r in raw]


def optimize(run: Run) -> dict[str, Any]:
  """Prompts (and answers) for the queries in `optimize.input`; see the module docstring."""
  config = run.config
  oc = config.optimize
  if not oc.input:
    raise ValueError("--mode=optimize needs --config.optimize.input=<.jsonl, .csv or .txt>")
  task = run.task
  rows, bad = read_queries(task, os.path.expanduser(oc.input), oc.field)
  for message in bad:
    logging.warning("skipped %s", message)
  out_path = os.path.expanduser(oc.output) or run.wd.optimized
  done = _done_rows(out_path)
  changed = [r.line for r in rows if r.line in done and done[r.line] != dict(r.example.fields)]
  if changed:
    raise ValueError(f"{out_path} was written for another version of {oc.input} (line "
                     f"{changed[0]} differs); set optimize.output to a new file")
  todo = [r for r in rows if r.line not in done]
  index = {r.line: i for i, r in enumerate(rows)}
  sampler = rounds.prompt_sampler(run, config.round)
  target, cache = (run.target, run.cache) if oc.answer else (None, None)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  bar = progress_bar(total=len(rows), initial=len(rows) - len(todo), desc="optimize",
                     unit="query")
  with open(out_path, "a", encoding="utf-8") as out:
    for start in range(0, len(todo), oc.batch_size):
      batch = todo[start:start + oc.batch_size]
      prompts = []
      for span in _contiguous(batch, index):  # a query's samples depend on its index only
        prompts += sampler([r.example.query for r in span], collect=oc.num_samples > 0,
                           seed=config.seed, num_samples=oc.num_samples or None,
                           first_index=index[span[0].line])
      said = None
      if oc.answer:
        pairs = [(r.example, p) for r, ps in zip(batch, prompts) for p in ps]
        flat = iter(answers(task, target, pairs, cache, config.eval.max_new_tokens))
        said = [[next(flat) for _ in ps] for ps in prompts]
      for k, (r, ps) in enumerate(zip(batch, prompts)):
        rec = {"line": r.line, "fields": dict(r.example.fields), "prompt": ps[0]}  # OWN_ROW_START
        if oc.num_samples:
          rec["prompts"] = ps
        if said is not None:
          rec["answer"] = said[k][0]
          if oc.num_samples:
            rec["answers"] = said[k]
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
      out.flush()
      os.fsync(out.fileno())
      bar.update(len(batch))
  bar.close()
  summary = {"output": out_path, "rows": len(rows), "written_now": len(todo),
             "skipped": len(bad), "round": sampler.round}
  print(f"optimize: {len(rows)} queries ({len(todo)} new) -> {out_path}; policy round "
        f"{sampler.round}; "
        f"skipped {len(bad)} bad rows" + (f" (first: {bad[0]})" if bad else ""), flush=True)
  return summary
