"""One run at a time per workdir: an exclusive flock on <workdir>/.lock, held while a mode runs.

Two runs on one workdir would both extend its datasets and cache (the second crashed on
a missing checkpoint, and the first's D_0 cost counted the second's calls for good).
The lock file names its holder (PID, host, mode, start time); a second run stops at
once with that. The kernel releases a flock when its process dies, so a lock left by a
killed run is taken over by the next one, never waited for. In a multi-process run
process 0 holds it for the group, and a busy workdir stops every process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Iterator

from qpo_jax import distributed
from qpo_jax.workdir import Workdir


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir."""


def _holder(fd: int) -> str:
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    info = json.loads(os.read(fd, 4096) or b"{}")
    return (f"PID {info['pid']} on {info['host']} (--mode={info['mode']}, since "
            f"{info['started']})")
  except (ValueError, KeyError, TypeError):
    return "another process"


@contextlib.contextmanager
def locked(workdir: str, mode: str) -> Iterator[None]:
  """Holds the workdir's lock for the duration; raises WorkdirBusy naming the holder."""
  fds: list[int] = []

  def take() -> None:
    if not distributed.is_writer():
      return
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(Workdir(workdir).lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd)
      os.close(fd)
      raise WorkdirBusy(f"{workdir} is in use by {holder}; wait for that run or stop it "
                        "(a rerun then continues where it stopped)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "mode": mode,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode(), 0)
    fds.append(fd)

  distributed.agree(take)
  try:
    yield
  finally:
    for fd in fds:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
