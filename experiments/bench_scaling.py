"""The policy train step over 1, 2, 4 and 8 devices: same numbers on every mesh, and step time.

  .venv/bin/python experiments/bench_scaling.py                  # CPU: simulated devices
  .venv/bin/python experiments/bench_scaling.py --simulate=false \
      --meshes=data=1,data=2,data=4,data=8                       # real accelerators

Each mesh runs in its own process (on CPU with
XLA_FLAGS=--xla_force_host_platform_device_count=N, since the device count is
fixed when JAX starts): the same initial parameters, batch and key go through
--steps jitted, sharded updates (`policy.train_step.make_train_step`, the trainer's).
The table gives each step's loss and gradient norm and the final parameters as
their largest difference to the first mesh (the parameter difference also
relative to the first mesh's whole update); data, FSDP and tensor sharding must
all agree to float32 rounding. Simulated CPU devices share the same cores, so their
step times say nothing about speed; with --simulate=false on a GPU/TPU host they
are real. Hardware: any; about 3.5 minutes on the 2-core dev CPU with the defaults.
Writes --out (JSON) and the same name with .md.

  .venv/bin/python experiments/bench_scaling.py --processes=1,2,4   # several processes

Multi-process mode: the same 4 devices (simulated on CPU) split over 1, 2 and 4
processes on 127.0.0.1 (`qpo_jax.distributed`, gloo collectives): seconds per
train step of the data-parallel mesh, and target scoring pairs/s (the policy
model as the scorer, prompts of --query_len tokens, 4 options of 2 tokens each;
as in a run, each process holds the token ids of its share of the pairs, the ids
are gathered, and the batches run over all devices),
so the table shows the runtime's cross-process overhead. On one CPU the
processes share its cores; real multi-host scaling needs a pod or cluster.
Writes --out with _processes before the extension.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

_POLICY = flags.DEFINE_string("policy", "gpt2-small", "policy preset (random weights)")
_MESHES = flags.DEFINE_string(
    "meshes", "data=1;data=2;data=4;data=8;data=2,fsdp=2,tensor=2;fsdp=4,tensor=2",
    "meshes separated by ';', each axis=size separated by ','")
_BATCH = flags.DEFINE_integer("batch", 8, "global rows per step (divisible by every data axis)")
_LQ = flags.DEFINE_integer("query_len", 40, "query tokens")
_LP = flags.DEFINE_integer("prompt_len", 40, "prompt tokens")
_STEPS = flags.DEFINE_integer("steps", 4, "updates per mesh")
_SIMULATE = flags.DEFINE_bool("simulate", True, "simulate the devices on the host CPU")
_CHILD = flags.DEFINE_string("child", "", "internal: run one mesh and print JSON")
_REF = flags.DEFINE_string("ref", "", "internal: the first mesh's final parameters (.npz)")
_PROCESSES = flags.DEFINE_string("processes", "", "multi-process mode: process counts, e.g. "
                                  "1,2,4 (each must divide --devices)")
_DEVICES = flags.DEFINE_integer("devices", 4, "multi-process mode: devices in all")
_PAIRS = flags.DEFINE_integer("pairs", 64, "multi-process mode: scoring pairs timed")
_PROCESS = flags.DEFINE_string("process", "", "internal: 'address,count,index' of a child")
_OUT = flags.DEFINE_string("out", "experiments/results/scaling.json", "JSON output ('' for none)")


def parse_mesh(text: str) -> dict[str, int]:
  axes = {"data": 1, "fsdp": 1, "tensor": 1}
  for part in text.split(","):
    name, _, size = part.partition("=")
    if name not in axes or not size.isdigit():
      raise ValueError(f"--meshes: {part!r} is not axis=size with axis in {sorted(axes)}")
    axes[name] = int(size)
  return axes


def compare_params(params, init, ref_path: str) -> dict[str, float]:
  """Saves the final parameters at `ref_path` (first mesh) or compares with the ones there.

  Returns the largest absolute difference and the difference's L2 norm relative to
  the reference's total update (final - initial): how far the meshes' training
  paths differ, measured against how far training moved.
  """
  import jax  # pylint: disable=g-import-not-at-top

  def flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v, np.float64)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}

  final = flat(params)
  if not os.path.exists(ref_path):
    np.savez(ref_path, **final)
    return {"max abs param diff": 0.0, "param diff / update": 0.0}
  start = flat(init)
  diff2 = update2 = biggest = 0.0
  with np.load(ref_path) as ref:
    for name, value in final.items():
      d, u = value - ref[name], ref[name] - start[name]
      diff2, update2 = diff2 + float(np.sum(d * d)), update2 + float(np.sum(u * u))
      biggest = max(biggest, float(np.abs(d).max()))
  return {"max abs param diff": biggest, "param diff / update": float(np.sqrt(diff2 / update2))}


def time_steps(cfg, params, mesh) -> tuple[object, list[float], list[float], float]:
  """--steps updates on one fixed batch: (state, losses, gradient norms, best s/step after
  the first, compiling, step)."""
  import jax  # pylint: disable=g-import-not-at-top

  from qpo_jax import sharding  # pylint: disable=g-import-not-at-top
  from qpo_jax.policy import train_step  # pylint: disable=g-import-not-at-top
  from bench_common import PAPER_TRAIN  # pylint: disable=g-import-not-at-top
  from qpo_jax.testing import policy_batch  # pylint: disable=g-import-not-at-top

  step = train_step.make_train_step(cfg, PAPER_TRAIN, 100, params, mesh)
  state = step.init(params)
  batch = sharding.shard_batch(policy_batch(_BATCH.value, _LQ.value, _LP.value, vocab=cfg.vocab_size, shortest=0.5), mesh)
  rng = jax.random.key(1)
  losses, norms, times = [], [], []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = step.update(state, batch, rng)
    losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
    times.append(time.perf_counter() - start)
  return state, losses, norms, float(np.min(times[1:])) if len(times) > 1 else times[0]


def run_child(mesh_text: str, ref_path: str) -> dict:
  """One mesh in this process: losses, gradient norms, parameters vs the first mesh, s/step."""
  import jax  # pylint: disable=g-import-not-at-top

  from qpo_jax import sharding  # pylint: disable=g-import-not-at-top
  from qpo_jax.models.config import preset  # pylint: disable=g-import-not-at-top
  from qpo_jax.policy.model import init_policy  # pylint: disable=g-import-not-at-top

  axes = parse_mesh(mesh_text)
  mesh = sharding.make_mesh(axes)
  cfg = preset(_POLICY.value)
  params = init_policy(cfg, jax.random.key(0))
  init = jax.tree_util.tree_map(np.asarray, params)  # the state is donated
  state, losses, norms, seconds = time_steps(cfg, params, mesh)
  return {"mesh": mesh_text, "devices": int(np.prod(list(axes.values()))),
          "platform": jax.devices()[0].platform, "losses": losses, "grad_norms": norms,
          **compare_params(state.params, init, ref_path), "s/step": seconds}


def run_mesh(mesh_text: str, ref_path: str) -> dict:
  devices = int(np.prod(list(parse_mesh(mesh_text).values())))
  env = dict(os.environ)
  if _SIMULATE.value:
    env.update(JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  args = [sys.executable, os.path.abspath(__file__), f"--child={mesh_text}",
          f"--ref={ref_path}"] + [
      f"--{f}={flags.FLAGS[f].serialize().split('=', 1)[1]}"
      for f in ("policy", "batch", "query_len", "prompt_len", "steps")]
  proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"mesh {mesh_text} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def run_process_child(spec: str) -> dict | None:
  """One process of a multi-process measurement; process 0 returns the figures."""
  from qpo_jax import distributed  # pylint: disable=g-import-not-at-top

  address, count, index = spec.split(",")
  if int(count) > 1:
    distributed.initialize(address, int(count), int(index), timeout_s=120)
  import jax  # pylint: disable=g-import-not-at-top

  from qpo_jax import scoring, sharding  # pylint: disable=g-import-not-at-top
  from qpo_jax.models.config import preset  # pylint: disable=g-import-not-at-top
  from qpo_jax.policy.model import init_policy  # pylint: disable=g-import-not-at-top
  from qpo_jax.models.transformer import init_params  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh({"data": -1})
  cfg = preset(_POLICY.value)
  params = sharding.shard_params(init_policy(cfg, jax.random.key(0)), mesh)
  seconds = time_steps(cfg, params, mesh)[3]
  lm = type("LM", (), {})()
  lm.cfg, lm.params = cfg, sharding.shard_params(init_params(cfg, jax.random.key(2)), mesh)
  rng = np.random.default_rng(0)
  prefixes = [rng.integers(3, cfg.vocab_size, _LQ.value).tolist() for _ in range(_PAIRS.value)]
  options = [[rng.integers(3, cfg.vocab_size, 2).tolist() for _ in range(4)]
             for _ in range(_PAIRS.value)]
  rows = list(zip(prefixes, options))
  mine = distributed.share(len(rows))

  def score():  # as LocalTarget.score_options: each process's share of the ids is gathered
    gathered, _ = distributed.allgather_share(rows[mine.start:mine.stop])
    return scoring.score(lm, [p for p, _ in gathered], [o for _, o in gathered], batch_size=8,
                         mesh=mesh, min_shared=0)

  score()  # compiles
  start = time.perf_counter()
  score()
  pairs_per_s = _PAIRS.value / (time.perf_counter() - start)
  if not distributed.is_writer():
    return None
  return {"processes": jax.process_count(), "devices": jax.device_count(),
          "s/step": seconds, "scoring pairs/s": pairs_per_s}


def run_processes(count: int) -> dict:
  """`count` processes sharing --devices simulated devices; process 0's figures."""
  if _DEVICES.value % count:
    raise ValueError(f"--processes: {count} does not divide --devices={_DEVICES.value}")
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={_DEVICES.value // count}")
  args = [sys.executable, os.path.abspath(__file__)] + [
      f"--{f}={flags.FLAGS[f].serialize().split('=', 1)[1]}"
      for f in ("policy", "batch", "query_len", "prompt_len", "steps", "pairs")]
  procs = [subprocess.Popen(args + [f"--process={address},{count},{i}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(count)]
  outs = [p.communicate(timeout=1800) for p in procs]
  for p, (_, err) in zip(procs, outs):
    if p.returncode:
      raise RuntimeError(f"{count} processes failed:\n{err[-3000:]}")
  return json.loads(outs[0][0].strip().splitlines()[-1])


def main(argv):
  del argv
  if _PROCESS.value:
    result = run_process_child(_PROCESS.value)
    if result:
      print(json.dumps(result))
    return
  if _PROCESSES.value:
    from qpo_jax.utils import write_table  # pylint: disable=g-import-not-at-top
    from bench_common import run_meta  # pylint: disable=g-import-not-at-top
    rows = []
    for count in [int(x) for x in _PROCESSES.value.split(",")]:
      rows.append(run_processes(count))
      print(rows[-1], flush=True)
    for r in rows:
      r["step vs 1 process"] = r["s/step"] / rows[0]["s/step"]
      r["scoring vs 1 process"] = r["scoring pairs/s"] / rows[0]["scoring pairs/s"]
    out = os.path.splitext(_OUT.value)[0] + "_processes.json" if _OUT.value else ""
    print(write_table(out, rows, list(rows[0]), run_meta(
        policy=_POLICY.value, batch=_BATCH.value, query_len=_LQ.value,
        prompt_len=_LP.value, pairs=_PAIRS.value)))
    return
  if _CHILD.value:
    print(json.dumps(run_child(_CHILD.value, _REF.value)))
    return
  from qpo_jax.utils import write_table  # pylint: disable=g-import-not-at-top
  from bench_common import run_meta  # pylint: disable=g-import-not-at-top

  results = []
  ref_path = os.path.join(tempfile.mkdtemp(prefix="qpo_scaling_"), "params.npz")
  for mesh_text in _MESHES.value.split(";"):
    results.append(run_mesh(mesh_text, ref_path))
    print(mesh_text, results[-1]["losses"], f"{results[-1]['s/step']:.2f} s/step", flush=True)
  base = results[0]
  os.unlink(ref_path)
  rel = lambda a, b: float(np.max(np.abs(np.subtract(a, b)) / np.abs(b)))  # noqa
  rows = [{"mesh": r["mesh"], "devices": r["devices"],
           "final loss": r["losses"][-1],
           "max abs loss diff": float(np.max(np.abs(np.subtract(r["losses"], base["losses"])))),
           "max grad-norm rel diff": rel(r["grad_norms"], base["grad_norms"]),
           "max abs param diff": r["max abs param diff"],
           "param diff / update": r["param diff / update"],
           "s/step": r["s/step"]} for r in results]
  meta = run_meta(policy=_POLICY.value, batch=_BATCH.value, query_len=_LQ.value,
                  prompt_len=_LP.value, steps=_STEPS.value, simulated=_SIMULATE.value,
                  platform=base["platform"], losses={r["mesh"]: r["losses"] for r in results})
  print(write_table(_OUT.value, rows, list(rows[0]), meta))


if __name__ == "__main__":
  app.run(main)
