"""One process of a multi-process test (tests/test_multihost.py starts several).

  python -m tests.multihost_driver train_steps OUT.json ADDRESS NUM_PROCESSES PROCESS_ID
  python -m tests.multihost_driver loop_dying WORKDIR ADDRESS NUM_PROCESSES PROCESS_ID BUDGET

`train_steps`: a few policy train steps on fixed batches over the 4 devices of
the run (data-parallel, then fsdp x tensor), written by process 0 as JSON
(metrics and per-leaf sums of the final parameters). `loop_dying`: the tiny
run, whose last process ends abruptly (os._exit, as a kill would) after
BUDGET target calls. ADDRESS '-' runs a single process.
"""

import json
import os
import sys

import numpy as np


def _start(address, num_processes, process_id):
  from qpo_jax import distributed  # pylint: disable=g-import-not-at-top
  if address != "-":
    distributed.initialize(address, int(num_processes), int(process_id), timeout_s=60)
  return distributed


def _batch(seed, b=8, lq=6, lp=5):
  rng = np.random.default_rng(seed)
  return dict(returns=rng.uniform(0, 1, b).astype(np.float32),
              query=rng.integers(3, 500, (b, lq)).astype(np.int32),
              query_mask=np.arange(lq)[None] < rng.integers(1, lq + 1, (b, 1)),
              prompt=rng.integers(3, 500, (b, lp)).astype(np.int32),
              prompt_mask=np.arange(lp)[None] < rng.integers(1, lp + 1, (b, 1)))


def train_steps(out, *start):
  distributed = _start(*start)
  import jax  # pylint: disable=g-import-not-at-top
  from qpo_jax import sharding  # pylint: disable=g-import-not-at-top
  from qpo_jax.models.config import preset  # pylint: disable=g-import-not-at-top
  from qpo_jax.policy import train_step  # pylint: disable=g-import-not-at-top
  from qpo_jax.policy.model import init_policy  # pylint: disable=g-import-not-at-top
  from qpo_jax.utils import load_config  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cfg = preset("tiny-llama")
  tc = dict(load_config(os.path.join(root, "configs", "base.py")).train, learning_rate=3e-3,
            batch_size=8)
  result = {}
  for name, axes in (("data", {"data": 4}), ("fsdp_tensor", {"fsdp": 2, "tensor": 2})):
    mesh = sharding.make_mesh(axes)
    params = sharding.shard_params(init_policy(cfg, jax.random.key(1)), mesh)
    step = train_step.make_train_step(cfg, tc, 10, params, mesh)
    state, metrics = step.init(params), []
    for i in range(4):
      state, m = step.update(state, sharding.shard_batch(_batch(i), mesh), jax.random.key(0))
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
  from qpo_jax.targets import run_target  # pylint: disable=g-import-not-at-top
  from qpo_jax.utils import load_config  # pylint: disable=g-import-not-at-top
  from tests.killable import Killable  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = load_config(os.path.join(root, "configs", "tiny.py"))
  target = run_target(config)
  if jax.process_index() == jax.process_count() - 1:  # ends as a kill would: no cleanup
    target = Killable(target, int(args[3]), die=lambda: os._exit(9))  # pylint: disable=W0212
  loop.run_loop(config, workdir, target=target)


if __name__ == "__main__":
  {"train_steps": train_steps, "loop_dying": loop_dying}[sys.argv[1]](*sys.argv[2:])
