"""One run per workdir: a second run stops at once naming the first; a dead run's lock is taken."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from qpo_jax import modes, workdir_lock

from tests.conftest import one_device_env
from tests.helpers import ROOT


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_host(tmp_path):
  work = str(tmp_path / "w")
  with workdir_lock.locked(work, "loop"):
    info = json.loads(open(os.path.join(work, ".lock")).read())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    with pytest.raises(workdir_lock.WorkdirBusy,
                       match=rf"{work} is in use by PID {os.getpid()} on "
                       rf"{socket.gethostname()} \(--mode=loop, since "):
      with workdir_lock.locked(work, "evaluate"):
        pass
  with workdir_lock.locked(work, "evaluate"):  # released when the first run ends
    assert json.loads(open(os.path.join(work, ".lock")).read())["mode"] == "evaluate"


@pytest.mark.multiprocess
def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
  work = tmp_path / "w"
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; sys.path.insert(0, %r)\n"
      "from qpo_jax import workdir_lock\n"
      "with workdir_lock.locked(%r, 'loop'):\n"
      "  print('held', flush=True); time.sleep(600)") % (ROOT, str(work))],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"PID {holder.pid} on"):
      with workdir_lock.locked(str(work), "loop"):
        pass
  finally:
    holder.kill()  # kill -9: no cleanup runs
    holder.wait()
  assert json.loads((work / ".lock").read_text())["pid"] == holder.pid  # stale, still there
  with workdir_lock.locked(str(work), "loop"):
    assert json.loads((work / ".lock").read_text())["pid"] == os.getpid()


def test_reading_modes_run_beside_a_run():
  assert set(modes.SHARED_MODES) == {"inspect_data", "serve_target"}
  assert set(modes.SHARED_MODES) < set(modes.MODES)


@pytest.mark.multiprocess
def test_the_same_command_twice_one_second_apart(tmp_path):
  """The second exits at once naming the first; the first's results and D_0 cost are those
  of a run alone."""
  cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config=configs/tiny.py",
         "--config.loop.num_loops=1", f"--workdir={tmp_path / 'w'}"]
  env = one_device_env()
  first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env)
  lock = tmp_path / "w" / ".lock"
  deadline = time.time() + 120
  while not (lock.exists() and lock.read_text()) and time.time() < deadline:
    time.sleep(0.2)
  time.sleep(1)
  started = time.time()
  second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert second.returncode != 0 and time.time() - started < 60
  assert f"is in use by PID {first.pid} on {socket.gethostname()} (--mode=loop" in second.stderr
  out, err = first.communicate(timeout=900)
  assert first.returncode == 0, err[-2000:]
  alone = tmp_path / "alone"
  subprocess.run(cmd[:-1] + [f"--workdir={alone}"], cwd=ROOT, check=True, capture_output=True,
                 timeout=900, env=env)
  got, want = (json.loads((d / "eval" / "results.json").read_text())
               for d in (tmp_path / "w", alone))
  assert got["methods"] == want["methods"]
  assert got["cost"]["d0"]["calls"] == want["cost"]["d0"]["calls"]

