"""Reading a task's raw rows: published files or tensorflow-datasets builders.

A task's `data` config section says where rows come from:

  kind="files": dir, format ("tweeteval" | "csv" | "jsonl" | "json" | "auto": by each
      file's extension),
      files {source split: file name, optionally sliced "SVAMP.json[:700]" or
      "test.csv[50%:]"}, columns (rename {our name: file column}, or for a CSV
      without header the list of column names), header (CSV), label_base
      (subtracted from integer labels, e.g. 1 for AG News' 1..4).
  kind="tfds": name, data_dir, splits {source split: tfds split}; read with
      `tfds.data_source`, which needs no TensorFlow.

Every row becomes a plain dict and goes through the task's `to_example`; a
row that fails is reported with its file and line/index.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import re
from typing import Any, Iterable, Mapping

import numpy as np

# tfds registers these builders only when their module is imported, and the
# package-wide import of their parents needs TensorFlow; import them directly.
_TFDS_MODULES = {
    "hellaswag": "tensorflow_datasets.text.hellaswag",
    "gsm8k": "tensorflow_datasets.text.gsm8k.gsm8k",
    "cosmos_qa": "tensorflow_datasets.question_answering.cosmos_qa",
}

_SLICE = re.compile(r"^(?P<file>.+?)(?:\[(?P<lo>-?\d*%?):(?P<hi>-?\d*%?)\])?$")


class DataError(ValueError):
  """A data file or row that cannot be read; the message names it."""


def _bound(text: str, n: int, default: int) -> int:
  if not text:
    return default
  value = int(text.rstrip("%"))
  if text.endswith("%"):
    value = int(round(value * n / 100))
  return value + n if value < 0 else value


def _slice(rows: list, lo: str | None, hi: str | None) -> tuple[list, int]:
  n = len(rows)
  start, stop = _bound(lo or "", n, 0), _bound(hi or "", n, n)
  return rows[start:stop], start


def _read_tweeteval(path_prefix: str) -> list[dict]:
  """TweetEval's `<split>_text.txt` + `<split>_labels.txt` (text lines end with a space)."""
  text_path, label_path = path_prefix + "_text.txt", path_prefix + "_labels.txt"
  for p in (text_path, label_path):
    if not os.path.exists(p):
      raise DataError(f"TweetEval file {p} does not exist")
  with open(text_path, encoding="utf-8") as f:
    texts = f.read().split("\n")
  with open(label_path, encoding="utf-8") as f:
    labels = f.read().split("\n")
  texts, labels = [t for t in texts if t.strip()], [x for x in labels if x.strip()]
  if len(texts) != len(labels):
    raise DataError(f"{text_path} has {len(texts)} lines but {label_path} has {len(labels)}")
  return [{"text": t.strip(), "label": x.strip()} for t, x in zip(texts, labels)]


def _read_csv(path: str, header: bool, columns: Any) -> list[dict]:
  with open(path, encoding="utf-8", newline="") as f:
    if header:
      return list(csv.DictReader(f))
    if not isinstance(columns, (list, tuple)):
      raise DataError(f"{path}: a CSV without header needs data.columns as a list of names")
    rows = []
    for i, row in enumerate(csv.reader(f)):
      if len(row) != len(columns):
        raise DataError(f"{path} line {i + 1}: {len(row)} columns, expected {len(columns)}")
      rows.append(dict(zip(columns, row)))
    return rows


def _read_jsonl(path: str) -> list[dict]:
  rows = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise DataError(f"{path} line {i + 1}: not valid JSON ({e.msg})") from None
  return rows


def read_json_list(path: str) -> list:
  """A JSON file holding a list of records; errors name the file (and line)."""
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  if not isinstance(data, list):
    raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
  return data


def _rename(row: Mapping[str, Any], columns: Any) -> dict:
  if isinstance(columns, Mapping):
    out = dict(row)
    for ours, theirs in columns.items():
      if theirs in row:
        out[ours] = row[theirs]
    return out
  return dict(row)


def read_file_split(data: Mapping[str, Any], split: str) -> tuple[list[dict], str]:
  """Raw rows of one source split from files, and a description for error messages."""
  files = dict(data.get("files") or {})
  if split not in files:
    raise DataError(f"task.data.files has no entry for split {split!r} (has {sorted(files)})")
  m = _SLICE.match(files[split])
  directory = os.path.expanduser(data.get("dir") or "")
  if not directory or not os.path.isdir(directory):
    raise DataError(f"task.data.dir {directory!r} is not a directory")
  path = os.path.join(directory, m["file"])
  fmt = data.get("format", "")
  if fmt == "auto":
    fmt = {".csv": "csv", ".jsonl": "jsonl", ".json": "json"}.get(os.path.splitext(path)[1], "")
    if not fmt:
      raise DataError(f"task.data.format='auto' cannot tell the format of {path} by its extension")
  if fmt == "tweeteval":
    rows = _read_tweeteval(path)
  elif not os.path.exists(path):
    raise DataError(f"data file {path} (split {split!r}) does not exist")
  elif fmt == "csv":
    rows = _read_csv(path, bool(data.get("header", True)), data.get("columns"))
  elif fmt == "jsonl":
    rows = _read_jsonl(path)
  elif fmt == "json":
    rows = read_json_list(path)
  else:
    raise DataError(f"task.data.format {fmt!r} is not one of tweeteval, csv, jsonl, json")
  rows, offset = _slice(rows, m["lo"], m["hi"])
  columns = data.get("columns")
  label_base = int(data.get("label_base", 0) or 0)
  out = []
  for row in rows:
    row = _rename(row, columns)
    if label_base and "label" in row:
      row["label"] = int(row["label"]) - label_base
    out.append(row)
  return out, f"{path}" + (f" (from row {offset})" if offset else "")


def _plain(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return value.item() if value.ndim == 0 else [_plain(v) for v in value.tolist()]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  return value


def read_tfds_split(data: Mapping[str, Any], split: str) -> tuple[list[dict], str]:
  """Raw rows of one source split from a tfds builder (already prepared in data_dir)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name = data.get("name")
  if not name:
    raise DataError("task.data.kind='tfds' needs task.data.name (a tfds builder, e.g. "
                    "'ag_news_subset')")
  if name.split(":")[0] in _TFDS_MODULES:
    importlib.import_module(_TFDS_MODULES[name.split(":")[0]])
  tfds_split = dict(data.get("splits") or {}).get(split, split)
  try:
    source = tfds.data_source(name, split=tfds_split, data_dir=data.get("data_dir") or None,
                              download=False)
  except Exception as e:  # tfds raises several types for a missing/unprepared dataset
    raise DataError(f"tfds dataset {name!r} split {tfds_split!r} could not be opened from "
                    f"data_dir={data.get('data_dir')!r}: {e}") from e
  rows = [_rename(_plain(source[i]), data.get("columns")) for i in range(len(source))]
  return rows, f"tfds {name}/{tfds_split}"


def load_split(task, data: Mapping[str, Any], split: str) -> list:
  """Examples of one *source* split ("train", "validation", "test") of `task`."""
  kind = data.get("kind", "files")
  if kind == "files":
    rows, where = read_file_split(data, split)
  elif kind == "tfds":
    rows, where = read_tfds_split(data, split)
  else:
    raise DataError(f"task.data.kind {kind!r} is not 'files' or 'tfds'")
  return list(to_examples(task, rows, where, split))


def to_examples(task, rows: Iterable[Mapping[str, Any]], where: str, split: str):
  for i, row in enumerate(rows):
    try:
      yield task.to_example(row, f"{split}:{i}")
    except (KeyError, ValueError, TypeError, IndexError) as e:
      raise DataError(f"{where}, record {i}: cannot make a {task.name} example "
                      f"({type(e).__name__}: {e}); fields present: {sorted(row)}") from None
