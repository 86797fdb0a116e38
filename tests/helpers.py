"""What many test files need: the repository root, its configs, and main.py as a user runs it."""

import os
import subprocess
import sys

import ml_collections

from qpo_jax.utils import load_config
from tests.conftest import one_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def repo_config(name: str) -> ml_collections.ConfigDict:
  """configs/<name> ('tiny.py', 'nlu.py:task=boolq'), as `--config` reads it."""
  return load_config(os.path.join(ROOT, "configs", name))


def tiny_config() -> ml_collections.ConfigDict:
  """configs/tiny.py on one device of the test process, as a laptop runs it: a whole run
  takes 17 s there against 40 s on a mesh of the process's 8 simulated devices. Meshes of
  several devices are tested by test_sharding, test_policy and test_evaluation in process,
  and the whole loop over 4 devices, in one process and in two, by test_multihost."""
  config = repo_config("tiny.py")
  config.mesh.update(data=1)
  return config


def run_main(*args: str, workdir, env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
  """`python main.py ARGS --workdir=WORKDIR` from the repository root, output captured; by
  default on one CPU device, as a user runs it (the tests' 8 simulated devices are for
  their own process: a child on them compiles and runs a third slower)."""
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args,
                         f"--workdir={workdir}"], capture_output=True, text=True, cwd=ROOT,
                        timeout=timeout, env=one_device_env() if env is None else env)


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
  """`python -c CODE` in a fresh process from the repository root, output captured (what a
  test checks about a process's own state: its imports, heap, signals)."""
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                        timeout=timeout)


def parse_config(*args: str) -> ml_collections.ConfigDict:
  """The config `main.py --config=... --config.<field>=...` would run, parsed in process
  by the same absl / ml_collections flags (a fresh flag set each call)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  argv = ["main.py", *[a.replace("--config=configs/", f"--config={ROOT}/configs/", 1)
                       for a in args]]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv,
                                  lock_config=True)
  values(argv)
  return values.config


def scalars(directory) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of the TensorBoard event files in a directory."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from qpo_jax.store.tfrecord import read_records  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(directory)):
    for raw in read_records(os.path.join(directory, name)):
      event = event_pb2.Event.FromString(raw)
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out
