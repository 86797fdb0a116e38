"""Small I/O helpers shared across the package: atomic writes, JSON, result tables, configs."""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import difflib
import errno
import gc
import importlib.util
import io
import json
import logging as logging_std
import os
import re
import resource
import signal
import sys
import tempfile
import threading
import traceback
from typing import IO, Any, Callable, Iterator, Sequence


_UMASK = os.umask(0)
os.umask(_UMASK)


def default_permissions(root: str) -> None:
  """Files and folders under `root` get the modes open() and mkdir() give (some writers,
  safetensors and mkstemp among them, make files only their owner can read)."""
  for folder, _, files in os.walk(root):
    os.chmod(folder, 0o777 & ~_UMASK)
    for f in files:
      os.chmod(os.path.join(folder, f), 0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
  """A file handle on a temp file beside `path`, fsynced and renamed over it on success.

  Readers never see half a file; on an exception the temp file is removed. In a
  multi-process run only the writer process writes (the others' handle goes
  nowhere): every shared file has exactly one writer.
  """
  from qpo_jax import distributed  # pylint: disable=g-import-not-at-top

  if not distributed.is_writer():
    yield io.BytesIO() if "b" in mode else io.StringIO()
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it (mkstemp makes it 0600)
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
  """This process's peak resident memory so far, in GiB (Linux reports ru_maxrss in KiB)."""
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)


def return_freed_memory() -> None:
  """Hands memory that Python and XLA have freed back to the OS. glibc keeps freed heap
  pages in the process, so a training state built after a target's scoring would stack
  on them in the resident set (the peak a laptop's budget is about). No-op off glibc."""
  gc.collect()
  try:
    trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: glibc's, on Linux
  except (OSError, AttributeError):
    return
  trim(0)


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


_CONFIG_DIRS = (  # the repository's configs/ (a checkout) or the installed qpo_jax.configs
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"),
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))


def configs_dir() -> str:
  """The directory of the shipped configs (base.py, quickstart.py, ...)."""
  for d in _CONFIG_DIRS:
    if os.path.isfile(os.path.join(d, "quickstart.py")):
      return d
  try:  # an installed copy: setup.py ships configs/ as the package qpo_jax.configs
    import importlib.resources  # pylint: disable=g-import-not-at-top
    return str(importlib.resources.files("qpo_jax.configs"))
  except ModuleNotFoundError:
    raise FileNotFoundError("no packaged configs found (configs/ of a checkout, or the "
                            "installed qpo_jax.configs)") from None


DATA_ENV = "QPO_DATA"


def data_dir(*parts: str) -> str:
  """A path under $QPO_DATA: the folder of public task files and prompt collections this
  package may not ship, which configs/paper.py and configs/nlu.py read (its layout:
  docs/tasks_and_data.md)."""
  root = os.environ.get(DATA_ENV, "")
  if not root:
    raise ValueError(f"${DATA_ENV} is not set: this config reads public task files or prompt "
                     "collections from it; set it to a folder laid out as "
                     "docs/tasks_and_data.md says (e.g. ag_news/test.csv, "
                     "prompts/instructeval/instructions/)")
  return os.path.join(os.path.expanduser(root), *parts)


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


def unknown_field(config, dotted: str) -> str | None:
  """Why `config` lacks the field `dotted` ('target.pathh'), with its fields, or where a
  field that moved went (configs/base.py's MOVED); None if it has it."""
  node, walked = config, []
  moved = config_module(os.path.join(configs_dir(), "base.py")).MOVED.get(dotted)
  for name in dotted.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if walked and not hasattr(node, "keys"):  # e.g. task.data.columns: a dict or list value
      where = ".".join(walked)
      return (f"{where} is one value, not a section: set it whole, e.g. "
              f"--config.{where}=\"{{'{name}': ...}}\"")
    if name not in keys and moved:
      return f"{dotted} is now {moved} (--config.{moved}=...)"
    if name not in keys:
      where = ".".join(walked) or "the config"
      close = difflib.get_close_matches(name, keys, n=1)
      return (f"{where} has no field {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
              + (f"; its fields: {', '.join(sorted(keys))}" if keys else ""))
    node, walked = node[name], walked + [name]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing where a `--config.<field>` override the config lacks is one clear line.

  ml_collections raises a bare AttributeError (with a traceback) for such a field.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # a missing or malformed flag: absl's own one line
    raise SystemExit(f"FATAL Flags parsing error: {e}\nPass --helpfull to see help on flags.") \
        from None
  except (AttributeError, KeyError, ValueError) as e:
    spec = next((a.split("=", 1)[1] if "=" in a else argv[i + 1]
                 for i, a in enumerate(argv[:-1] if argv[-1] == "--config" else argv)
                 if a == "--config" or a.startswith("--config=")), None)
    bad = None
    try:
      config = load_config(spec) if spec else None
    except Exception:  # pylint: disable=broad-except  # the config file itself fails: say e
      config = None
    if config is not None:
      for arg in argv:
        if arg.startswith("--config.") and (why := unknown_field(config, arg[9:].split("=")[0])):
          bad = f"{arg.split('=')[0]}: {spec.split(':')[0]}: {why}"
          break
    raise SystemExit(f"FATAL Flags parsing error: {bad or e}") from None


_WRITE_ERRORS = {errno.ENOSPC: "cannot write {}: no space left on the device",
                 errno.EDQUOT: "cannot write {}: disk quota exceeded",
                 errno.EROFS: "cannot write {}: read-only file system",
                 errno.EACCES: "cannot access {}: permission denied",
                 errno.EPERM: "cannot access {}: operation not permitted",
                 errno.ENOTDIR: "cannot create {}: a part of the path is a file, not a directory"}
_WRITE_TEXTS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


def write_failure(error: BaseException) -> str | None:
  """One line naming the path and the cause if `error` (or an error behind it) is a failed
  write: full disk, read-only or unwritable path. None otherwise.

  Orbax reports these as a ValueError whose text holds the OS message and the path.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _WRITE_ERRORS:
      return _WRITE_ERRORS[error.errno].format(error.filename or "(path not given)")
    text = str(error)
    for needle, code in _WRITE_TEXTS.items():
      if needle in text:
        paths = re.findall(r"\"(/[^\"]+)\"|'(/[^']+)'", text)
        path = next((a or b for a, b in paths), "(path not given)")
        return _WRITE_ERRORS[code].format(path)
    error = error.__cause__ or error.__context__
  return None


def exit_on_write_failure(fn: Callable[[], Any]) -> Any:
  """Runs `fn`; a failed write ends the process with one line naming the path and cause.

  The traceback is printed first and the process exits at once (`os._exit`), so the
  line is the last thing printed, not buried under background threads' shutdown
  noise. Everything already finished is on disk (writes are atomic), so rerunning
  the command after freeing space resumes.
  """
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    why = write_failure(e)
    if why is None:
      raise
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.write(f"FATAL {why}. Free space or fix the path's permissions (or use another "
                     "--workdir), then rerun the same command: it resumes.\n")
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


def quiet_library_info() -> None:
  """INFO lines come from this package only; other libraries (orbax writes ~20 per
  checkpoint) show warnings and errors. `--verbosity=1` shows everything."""
  from absl import logging  # pylint: disable=g-import-not-at-top

  package = os.path.dirname(os.path.abspath(__file__)) + os.sep

  class OwnInfo(logging_std.Filter):
    def filter(self, record):
      return (record.levelno >= logging_std.WARNING or record.pathname.startswith(package)
              or logging.get_verbosity() > logging.INFO)

  logging.get_absl_handler().addFilter(OwnInfo())


class Terminated(BaseException):
  """SIGTERM, raised where the main thread is (as SIGINT raises KeyboardInterrupt)."""


_stopped_in: list[str] = []  # the innermost stage a signal stopped, recorded as it unwinds


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
  """Names the work inside, for the line `exit_on_signal` prints when a signal stops it."""
  try:
    yield
  except (KeyboardInterrupt, Terminated):
    if not _stopped_in:
      _stopped_in.append(name)
    raise


def exit_on_signal(fn: Callable[[], Any], what: str) -> Any:
  """Runs `fn`; SIGINT or SIGTERM end the process with one line saying where it stopped.

  The signal unwinds the stack first (finally blocks run: checkpoint saves finish, temp
  files go), then the process exits at once with 130 (SIGINT) or 143 (SIGTERM):
  interpreter shutdown with XLA's threads mid-work could crash (Ctrl-C in training
  ended in a segmentation fault). Writes are atomic, so a rerun continues.
  """
  def terminate(signum, frame):
    del signum, frame
    raise Terminated()

  def redeliver(unraisable):
    # a signal that lands in a finalizer (__del__, e.g. a tokenizer's regex objects) raises
    # there, and Python only prints and drops the exception: the run went on to the end.
    # Delivered again from another thread once the finalizer is left, it raises where the
    # main thread is then (again here if that is another finalizer).
    if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
      signum = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
      threading.Timer(0.01, _thread.interrupt_main, (signum,)).start()
    else:
      previous_hook(unraisable)

  previous = signal.signal(signal.SIGTERM, terminate)
  previous_hook, sys.unraisablehook = sys.unraisablehook, redeliver
  try:
    return fn()
  except (KeyboardInterrupt, Terminated) as e:
    name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT", 130)
    sys.stdout.flush()
    sys.stderr.write(f"\nStopped by {name} during {_stopped_in[0] if _stopped_in else what}. "
                     "What had finished is saved; rerun the same command to continue from "
                     "there.\n")
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  finally:
    signal.signal(signal.SIGTERM, previous)
    sys.unraisablehook = previous_hook


@contextlib.contextmanager
def compile_cache(path: str, min_compile_secs: float = 0.2) -> Iterator[None]:
  """Inside, compiled XLA programs go to (and come from) `path`.

  Programs that took at least `min_compile_secs` to compile are kept (JAX's default
  is 1 s; on CPU most of a small model's programs compile faster and still add up).
  The setting is restored on exit, so one process can run several workdirs. The
  directory is trusted like code: it must be the user's own (it is in the workdir).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top

  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)

  def use(directory, secs):
    cc.reset_cache()  # the next compilation opens `directory`
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", secs)

  use(path, min_compile_secs)
  try:
    yield
  finally:
    use(*before)


_PROGRESS = {"show": True}


def show_progress(show: bool) -> None:
  """Turns every stage's progress bar on or off (config `progress`; off for logs and CI)."""
  _PROGRESS["show"] = bool(show)


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, leave: bool = True):
  """A tqdm bar with rate and ETA on stderr, unless `show_progress(False)` or tqdm's own
  TQDM_DISABLE is set in the environment."""
  import tqdm  # pylint: disable=g-import-not-at-top

  off = not _PROGRESS["show"] or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                   leave=leave, disable=off)
