"""One process of a multi-process test (tests/test_multihost.py starts several).

  python -m tests.multihost_driver train_steps OUT.json ADDRESS NUM_PROCESSES PROCESS_ID
  python -m tests.multihost_driver loop_dying WORKDIR ADDRESS NUM_PROCESSES PROCESS_ID BUDGET
  python -m tests.multihost_driver shares OUT_DIR ADDRESS NUM_PROCESSES PROCESS_ID

`train_steps`: a few policy train steps on fixed batches over the 4 devices of
the run (data-parallel, then fsdp x tensor), written by process 0 as JSON
(metrics and per-leaf sums of the final parameters). `loop_dying`: the tiny
run, whose last process ends abruptly (os._exit, as a kill would) after
BUDGET target calls (its share of them). `shares`: training batches read from a
dataset and pairs evaluated on the tiny target over a data-parallel mesh of the
run's 4 devices; each process writes what it read, rendered and tokenised, and
the batches and outcomes every process saw, to OUT_DIR/process_<i>.json.
ADDRESS '-' runs a single process.
"""

import dataclasses
import json
import os
import sys

import numpy as np


def _start(address, num_processes, process_id):
  from qpo_jax import distributed  # pylint: disable=g-import-not-at-top
  if address != "-":
    distributed.initialize(address, int(num_processes), int(process_id), timeout_s=60)
  return distributed


def train_steps(out, *start):
  distributed = _start(*start)
  import jax  # pylint: disable=g-import-not-at-top
  from qpo_jax import sharding  # pylint: disable=g-import-not-at-top
  from qpo_jax.models.config import preset  # pylint: disable=g-import-not-at-top
  from qpo_jax.policy import train_step  # pylint: disable=g-import-not-at-top
  from qpo_jax.policy.model import init_policy  # pylint: disable=g-import-not-at-top
  from qpo_jax.policy.settings import TrainSettings  # pylint: disable=g-import-not-at-top
  from qpo_jax.testing import policy_batch  # pylint: disable=g-import-not-at-top
  from qpo_jax.utils import load_config  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cfg = preset("tiny-llama")
  tc = dataclasses.replace(TrainSettings.of(load_config(os.path.join(root, "configs", "base.py"))
                                            .train), learning_rate=3e-3, batch_size=8)
  result = {}
  for name, axes in (("data", {"data": 4}), ("fsdp_tensor", {"fsdp": 2, "tensor": 2})):
    mesh = sharding.make_mesh(axes)
    params = sharding.shard_params(init_policy(cfg, jax.random.key(1)), mesh)
    step = train_step.make_train_step(cfg, tc, 10, params, mesh)
    state, metrics = step.init(params), []
    for i in range(4):
      state, m = step.update(state, sharding.shard_batch(
          policy_batch(8, 6, 5, seed=i, max_return=1.0), mesh), jax.random.key(0))
      metrics.append({k: float(v) for k, v in m.items()})
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    result[name] = {
        "metrics": metrics,
        "params": {sharding.path_str(p): [float(np.sum(distributed.to_host(x))),
                                          float(np.sum(np.square(distributed.to_host(x))))]
                   for p, x in leaves},
        "processes": jax.process_count()}
  if distributed.is_writer():
    with open(out, "w") as f:
      json.dump(result, f)


def loop_dying(workdir, *args):
  _start(*args[:3])
  import jax  # pylint: disable=g-import-not-at-top
  from qpo_jax import loop  # pylint: disable=g-import-not-at-top
  from qpo_jax.context import Run  # pylint: disable=g-import-not-at-top
  from qpo_jax.utils import load_config  # pylint: disable=g-import-not-at-top
  from tests.killable import Killable  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = load_config(os.path.join(root, "configs", "tiny.py"))
  target = Run(config).target
  if jax.process_index() == jax.process_count() - 1:  # ends as a kill would: no cleanup
    target = Killable(target, int(args[3]), die=lambda: os._exit(9))  # pylint: disable=W0212
  loop.run_loop(config, workdir, target=target)


def shares(out_dir, *start):
  distributed = _start(*start)
  import jax  # pylint: disable=g-import-not-at-top
  from qpo_jax import evaluation, rewards, sharding  # pylint: disable=g-import-not-at-top
  from qpo_jax.checkpoints.registry import load_model  # pylint: disable=g-import-not-at-top
  from qpo_jax.policy import batches, training_rows  # pylint: disable=g-import-not-at-top
  from qpo_jax.store import dataset, tfrecord  # pylint: disable=g-import-not-at-top
  from qpo_jax.store.records import Record  # pylint: disable=g-import-not-at-top
  from qpo_jax.targets import LocalTarget  # pylint: disable=g-import-not-at-top
  from qpo_jax.tasks import get_task  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh({"data": 4})
  tiny = {"name": "random", "preset": "tiny-llama", "tokenizer": "smollm2"}
  lm = load_model(tiny)
  rng = np.random.default_rng(0)
  recs = [Record(task="t", query=" ".join(["word"] * int(rng.integers(1, 30))) + f" {i}",
                 prompt=" ".join(["p"] * int(rng.integers(0, 12))), reward=float(i),
                 query_id=f"q{i % 10}") for i in range(40)]
  data = os.path.join(out_dir, "ds")
  dataset.write_dataset(data, recs, records_per_shard=16)  # process 0 writes, the rest wait
  read = []
  real_read = dataset.RecordIndex.read
  dataset.RecordIndex.read = lambda self, ix: read.append(list(ix)) or real_read(self, ix)
  rows, _ = training_rows.from_dataset(data, lm.tokenizer, query_len=24, prompt_len=10,
                                       top_fraction=0.75)
  kept = [i for i, r in enumerate(recs) if any(r is k for k in rewards.expert_filter(
      recs, top_fraction=0.75))]
  loader = batches.Batches(rows, batch_size=8, seed=2, mesh=mesh, pad_multiple=8, window=2)
  shared_read, placed, batch_reads = [i for part in read for i in part], [], []
  for _ in range(3):
    read.clear()
    batch = loader.next()
    placed.append({k: distributed.to_host(v).tolist() for k, v in batch.items()})
    batch_reads.append([i for part in read for i in part])

  task = get_task("topics")
  queries = [task.to_example(r, f"all:{i}") for i, r in enumerate(task.builtin_rows(12, 0))]
  pairs = [(q, p) for q in queries for p in ("Topic?", "Which topic is this news about?")]
  target = LocalTarget(lm, batch_size=8, mesh=mesh)
  rendered, tokenized = [], []
  real_render, real_prefix = task.render, target.prefix_ids
  object.__setattr__(task, "render", lambda ex, prompt, demos=(): rendered.append(ex.uid) or
                     real_render(ex, prompt, demos))  # (a frozen dataclass)
  target.prefix_ids = lambda text: tokenized.append(text) or real_prefix(text)
  outcomes = evaluation.evaluate_pairs(task, target, pairs, chunk=10)

  bad = os.path.join(out_dir, "bad")  # record 35 (shard 2, read by the last process) damaged
  dataset.write_dataset(bad, recs, records_per_shard=16)
  if distributed.is_writer():
    path = os.path.join(bad, dataset.shard_name(2, 3))
    blob = bytearray(open(path, "rb").read())
    blob[tfrecord.record_offsets(path)[3] + 20] ^= 1
    open(path, "wb").write(bytes(blob))
  distributed.barrier("record damaged")
  try:
    training_rows.from_dataset(bad, lm.tokenizer, query_len=24, prompt_len=10)
    error = ""
  except Exception as e:  # pylint: disable=broad-except
    error = f"{type(e).__name__}: {e}"
  with open(os.path.join(out_dir, f"process_{jax.process_index()}.json"), "w") as f:
    json.dump({"processes": jax.process_count(), "records": len(recs), "rows": len(rows),
               "kept": kept,
               "first_read": shared_read, "batch_reads": batch_reads,
               "local_rows": sharding.local_rows(mesh, 8).tolist(),
               "batch_rows": [r.tolist() for r in loader._batches(0)[:3]],  # noqa: SLF001
               "placed": placed, "rendered": len(rendered), "tokenized": len(tokenized),
               "pairs": len(pairs),
               "outcomes": [[o.pred, list(o.option_nll)] for o in outcomes], "error": error}, f)


if __name__ == "__main__":
  {"train_steps": train_steps, "loop_dying": loop_dying, "shares": shares}[sys.argv[1]](*sys.argv[2:])
