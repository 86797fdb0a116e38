"""Small I/O helpers shared across the package."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Iterator


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


def read_json(path: str, default: Any = None) -> Any:
  """The JSON in `path`, or `default` when the file does not exist."""
  if not os.path.exists(path):
    return default
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from None
