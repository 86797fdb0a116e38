"""Small I/O helpers shared across the package: atomic writes, JSON, result tables, configs."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import tempfile
from typing import IO, Any, Iterator, Sequence


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
  """A file handle on a temp file beside `path`, fsynced and renamed over it on success.

  Readers never see half a file; on an exception the temp file is removed.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as fh:
      yield fh
      fh.flush()
      os.fsync(fh.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` to `path` via a temp file and rename, so readers never see half a file."""
  with atomic_open(path) as fh:
    fh.write(text)


def peak_memory_gb() -> float:
  """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)


def read_json(path: str, default: Any = None) -> Any:
  """The JSON in `path`, or `default` when the file does not exist."""
  if not os.path.exists(path):
    return default
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from None


def write_table(path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
                meta: dict[str, Any]) -> str:
  """Writes rows as JSON (`path`, with `meta`) and a Markdown table (`path` with .md).

  Returns the Markdown; with an empty `path` nothing is written.
  """
  table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    table.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                                   for c in columns) + " |")
  markdown = "\n".join(table) + "\n"
  if path:
    atomic_write_text(path, json.dumps({"meta": meta, "rows": list(rows)}, indent=2))
    atomic_write_text(os.path.splitext(path)[0] + ".md", markdown)
  return markdown


def config_module(path: str):
  """The module of a config file (its `get_config` and any constants it defines)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "qpo_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str):
  """`get_config()` of a config file, as `--config` reads it: 'configs/paper.py:tweet_emotion,...'.

  For notebooks and scripts that call the library without absl flags.
  """
  path, _, arg = spec.partition(":")
  module = config_module(path)
  return module.get_config(arg) if arg else module.get_config()
