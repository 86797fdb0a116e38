"""Several processes, one run: 2 processes x 2 CPU devices against 1 process x 4, on 127.0.0.1.

Every child has a timeout and the tests kill what is left, so nothing outlives them.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import EIGHT_DEVICES

from tests.helpers import ROOT, scalars
LIMIT_S = 900


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "").replace(EIGHT_DEVICES, "").strip()
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return env


def _free_address() -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"127.0.0.1:{s.getsockname()[1]}"


def _start(argv_of, n: int, devices: int, log_dir) -> list[subprocess.Popen]:
  """n processes (argv_of(address, n, i)) with `devices` CPU devices each, logs in log_dir."""
  address = _free_address() if n > 1 else "-"
  procs = []
  for i in range(n):
    log = open(os.path.join(log_dir, f"process_{i}.log"), "w")  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(argv_of(address, n, i), cwd=ROOT, env=_env(devices),
                                  stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, log_dir, limit=LIMIT_S) -> list[int]:
  deadline = time.time() + limit
  try:
    return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for name in sorted(os.listdir(log_dir)):
      with open(os.path.join(log_dir, name)) as f:
        tail = f.read()[-3000:]
      print(f"--- {name}\n{tail}")


def _main(workdir):
  def argv(address, n, i):
    extra = [] if n == 1 else [f"--coordinator_address={address}", f"--num_processes={n}",
                               f"--process_id={i}", "--join_timeout_s=60"]
    return [sys.executable, "main.py", "--config=configs/tiny.py", f"--workdir={workdir}", *extra]
  return argv


def _run(tmp_path, name, argv_of, n, devices):
  logs = tmp_path / f"logs_{name}"
  logs.mkdir()
  codes = _wait(_start(argv_of, n, devices, str(logs)), str(logs))
  assert codes == [0] * n, f"{name}: exit codes {codes}"


def _results(workdir):
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    r = json.load(f)
  usage = {k: r["cost"]["total"][k] for k in ("calls", "prompt_tokens", "generated_tokens")}
  del r["cost"]  # wall times and memory differ
  return r, usage


def _records(workdir):
  from qpo_jax.store import dataset
  out = {}
  for t in range(3):
    recs, _ = dataset.read_dataset(os.path.join(workdir, "data", f"loop_{t}"))
    out[t] = sorted((r.query, r.prompt, round(r.reward, 4)) for r in recs)
  return out


def _params(workdir):
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "policy", "round_2", "params")
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # saved over 4 devices: onto one
  meta = ocp.StandardCheckpointer().metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  tree = ocp.StandardCheckpointer().restore(path, jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta))
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_leaves_with_path(tree)}


def _same_run(a, b):
  ra, ua = _results(a)
  rb, ub = _results(b)
  assert ra["methods"] == rb["methods"] and ra["qpo_prompts"] == rb["qpo_prompts"]
  assert ra["queries"] == rb["queries"]
  assert ua == ub  # no pair evaluated twice across processes
  assert _records(a) == _records(b)
  pa, pb = _params(a), _params(b)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_allclose(pa[k], pb[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("one")
  _run(tmp, "one", _main(str(tmp / "w")), 1, 4)
  return str(tmp / "w")


@pytest.mark.multiprocess
def test_a_process_killed_in_collection_then_both_rerun_resumes(tmp_path, one_process_run):
  """Two processes build D_0 and train round 1, one dies in loop 1's collection, both rerun
  to the end: every stage ran over two processes, and the run equals the one-process run
  (records, parameters, the report, the calls it counts)."""
  work = str(tmp_path / "w")
  logs = tmp_path / "logs_dying"
  logs.mkdir()
  # process 1's budget: its half of D_0's 88 target calls, then 2 of loop 1's collection
  argv = lambda address, n, i: [sys.executable, "-m", "tests.multihost_driver",  # noqa: E731
                                "loop_dying", work, address, str(n), str(i), str(88 // 2 + 2)]
  procs = _start(argv, 2, 2, str(logs))
  deadline = time.time() + LIMIT_S
  while procs[1].poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert procs[1].returncode == 9, "process 1 should have died in loop 1's collection"
  procs[0].send_signal(signal.SIGKILL)  # what a scheduler does to the rest of a failed job
  _wait(procs, str(logs))
  assert os.path.exists(os.path.join(work, "data", "loop_0", "manifest.json"))
  assert os.path.exists(os.path.join(work, "data", "loop_1.collect.json"))
  assert not os.path.exists(os.path.join(work, "data", "loop_1"))
  _run(tmp_path, "rerun", _main(work), 2, 2)
  _same_run(one_process_run, work)
  for name in os.listdir(os.path.join(work, "eval")):
    assert ".tmp" not in name
  # TensorBoard's events have one writer too: each scalar once, as in the one-process run
  tb = [scalars(os.path.join(w, "eval", "tb")) for w in (one_process_run, work)]
  assert tb[0] and tb[1] == tb[0]
  with open(tmp_path / "logs_rerun" / "process_1.log") as f:
    assert "[process 1/2]" in f.read()  # log lines name their process


@pytest.mark.multiprocess
def test_train_steps_over_two_processes_equal_one_process(tmp_path):
  out = {}
  for name, n, devices in (("one", 1, 4), ("two", 2, 2)):
    path = str(tmp_path / f"{name}.json")
    argv = lambda address, n, i, path=path: [  # noqa: E731
        sys.executable, "-m", "tests.multihost_driver", "train_steps", path, address, str(n),
        str(i)]
    _run(tmp_path, name, argv, n, devices)
    with open(path) as f:
      out[name] = json.load(f)
  for mesh in ("data", "fsdp_tensor"):
    one, two = out["one"][mesh], out["two"][mesh]
    assert (one["processes"], two["processes"]) == (1, 2)
    for a, b in zip(one["metrics"], two["metrics"]):
      for k in ("loss", "ce", "mse", "grad_norm"):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (mesh, k)
    for k, (s, sq) in one["params"].items():
      assert two["params"][k] == pytest.approx([s, sq], rel=1e-5, abs=1e-5), (mesh, k)


@pytest.mark.multiprocess
def test_each_process_reads_renders_and_tokenises_only_its_share(tmp_path):
  """Training rows and target calls over 2 processes x 2 devices: each process reads,
  renders and tokenises its share, and the batches and outcomes equal 1 process x 4."""
  out = {}
  for name, n, devices in (("one", 1, 4), ("two", 2, 2)):
    path = tmp_path / name
    path.mkdir()
    argv = lambda address, n, i, path=str(path): [  # noqa: E731
        sys.executable, "-m", "tests.multihost_driver", "shares", path, address, str(n), str(i)]
    _run(tmp_path, name, argv, n, devices)
    out[name] = []
    for i in range(n):
      with open(path / f"process_{i}.json") as f:
        out[name].append(json.load(f))
  (one,), two = out["one"], out["two"]
  assert one["rows"] == len(one["kept"]) < one["records"] == 40
  assert one["first_read"] == list(range(40)) and one["rendered"] == 2 * one["pairs"]
  for p in two:
    assert p["processes"] == 2 and p["kept"] == one["kept"]
    assert p["placed"] == one["placed"]  # every process sees the whole global batches
    assert p["outcomes"] == one["outcomes"]
  # the dataset's facts: each process read its half of the records, once
  assert two[0]["first_read"] == list(range(20)) and two[1]["first_read"] == list(range(20, 40))
  # a batch: each process reads only the records of the rows its devices hold
  assert two[0]["local_rows"] == [0, 1, 2, 3] and two[1]["local_rows"] == [4, 5, 6, 7]
  for p in two:
    for rows, reads in zip(one["batch_rows"], p["batch_reads"]):
      mine = {one["kept"][rows[j]] for j in p["local_rows"]}
      assert set(reads) == mine - set(p["first_read"])
  assert any(p["batch_reads"] != [[], [], []] for p in two)  # some rows were read for a batch
  # target calls: each pair rendered by one process for its key and once to score it,
  # and tokenised by one process
  assert [p["tokenized"] for p in two] == [12, 12] and one["tokenized"] == 24
  assert [p["rendered"] for p in two] == [24, 24]
  # a damaged record read by process 1 alone stops both processes, with its message
  assert "data-00002-of-00003.tfrecord" in one["error"]
  for p in two:
    assert p["error"].startswith("RuntimeError: process 1 failed: CorruptRecordError: ")
    assert "data-00002-of-00003.tfrecord" in p["error"]


@pytest.mark.multiprocess
def test_a_process_that_cannot_reach_the_coordinator_fails_in_time(tmp_path):
  address = _free_address()  # nothing listens there
  start = time.time()
  r = subprocess.run([sys.executable, "main.py", "--config=configs/tiny.py",
                      f"--workdir={tmp_path / 'w'}", f"--coordinator_address={address}",
                      "--num_processes=2", "--process_id=1", "--join_timeout_s=5"],
                     cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert time.time() - start < 60
  assert f"could not join the run at the coordinator {address} within 5 s" in r.stderr
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.multiprocess
def test_start_up_flags_go_together(tmp_path):
  r = subprocess.run([sys.executable, "main.py", "--config=configs/tiny.py",
                      f"--workdir={tmp_path / 'w'}", "--num_processes=2"],
                     cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert "--coordinator_address, --process_id missing" in r.stderr


@pytest.mark.parametrize("env,found", [
    ({}, None),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI"),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}, "Slurm"),
    ({"SLURM_NTASKS": "8"}, None),  # an allocation, not a step started by srun
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1"}, "TPU pod slice"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # a single TPU VM
])
def test_clusters_are_detected_from_their_environment(monkeypatch, env, found):
  from qpo_jax import distributed
  for name in ("OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "SLURM_STEP_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert distributed._cluster_env() == found  # pylint: disable=protected-access
  if found is None:  # a single process: nothing to join, nothing changes
    assert distributed.initialize() is False and not distributed.multi()
    assert distributed.is_writer() and distributed.share(5) == range(5)
