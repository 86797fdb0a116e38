"""One round of policy training: batches, jitted updates, orbax checkpoints, metrics, resume.

`train_round` is resumable at any point: the state (step, parameters,
optimizer) and the data order (epoch, position) are checkpointed together
with orbax under `<round_dir>/checkpoints`; a rerun restores the latest and
continues, and the result equals an uninterrupted run. Metrics go to
`<round_dir>/metrics.jsonl` (lines after the restored step are dropped on
resume, so none repeat) and to TensorBoard event files in `<round_dir>/tb`.
A finished round writes `<round_dir>/final` and is not trained again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from qpo_jax import checksums, distributed
from qpo_jax.models.config import ModelConfig
from qpo_jax.policy import train_step
from qpo_jax.policy.batches import Batches
from qpo_jax.policy.settings import TrainSettings
from qpo_jax.policy.training_rows import TrainingRows
from qpo_jax.utils import atomic_write_text, peak_memory_gb, progress_bar
from qpo_jax.workdir import RoundDir


def _trim_metrics(path: str, last_step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= last_step]
  atomic_write_text(path, "".join(lines))


def train_round(round_dir: str, cfg: ModelConfig, init_params: Any, rows: TrainingRows,
                tc: TrainSettings, *, mesh, seed: int, stop_after: int | None = None,
                started: float | None = None) -> Any:
  """Trains from `init_params` on `rows` for `tc.epochs`; returns the final parameters.

  A fresh start takes over `init_params`' buffers (see `train_step.TrainStep.init`).

  `stop_after` ends the run after that many steps of this call (tests of resume).
  The `final` marker carries the round's cost: seconds since `started` (default: this
  call) in the process that finished it, and its peak memory.
  """
  entered = time.time()
  files = RoundDir(round_dir)
  final = files.final
  if os.path.exists(final):
    return load_final_params(round_dir, init_params)
  batches = Batches(rows, batch_size=tc.batch_size, seed=seed, mesh=mesh,
                    pad_multiple=tc.pad_multiple)
  total = int(tc.epochs * batches.steps_per_epoch)
  step_fns = train_step.make_train_step(cfg, tc, batches.steps_per_epoch, init_params, mesh)
  manager, state, latest = _restore_latest_good(round_dir, step_fns, batches, total)
  if state is None:
    state = step_fns.init(init_params)
  metrics_path = files.metrics
  _trim_metrics(metrics_path, int(latest or 0))
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  writes = distributed.is_writer()  # the other processes of a multi-process run log nothing
  writer = SummaryWriter(files.tensorboard) if writes else None
  rng = jax.random.key(seed)
  log_every, ckpt_every = tc.log_every, tc.checkpoint_every
  start_step = int(state.step)
  bar = progress_bar(total=total, initial=start_step, desc=os.path.basename(round_dir),
                     unit="step")
  t0 = time.time()
  try:
    with open(metrics_path if writes else os.devnull, "a") as log:
      for step in range(start_step, total):
        state, metrics = step_fns.update(state, batches.next(), rng)
        done = step + 1
        loss = float(metrics["loss"])
        if not math.isfinite(loss):  # stop here: a later step would checkpoint NaN weights
          raise FloatingPointError(
              f"{round_dir}: the loss is {loss} at step {done} of {total}; the round stops "
              f"unfinished (last checkpoint: step {manager.latest_step() or 'none'}). Lower "
              "train.learning_rate or train.grad_clip, or check the dataset's rewards")
        bar.update(1)
        if done % log_every == 0 or done == total:
          row = {"step": done, "epoch": batches.epoch, **{k: float(v) for k, v in metrics.items()},
                 "steps_per_s": (done - start_step) / max(time.time() - t0, 1e-9)}
          log.write(json.dumps(row) + "\n")
          log.flush()
          for k, v in row.items():
            if k != "step" and writer:
              writer.add_scalar(f"train/{k}", v, done)
          bar.set_postfix(loss=f"{row['loss']:.3f}", ce=f"{row['ce']:.3f}")
        # the last step's state is not checkpointed: `params` below is all a finished round
        # keeps, and a full-state save there would hold a second host copy of the model
        # and its optimizer at the round's memory peak (a kill before `final` redoes the
        # steps since the last checkpoint)
        if (done % ckpt_every == 0 and done < total) or (stop_after and done - start_step ==
                                                         stop_after):
          manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     data=ocp.args.JsonSave(batches.state())))
          _record_sums(round_dir, manager)
        if stop_after and done - start_step == stop_after:
          break
  finally:
    manager.wait_until_finished()
    bar.close()
    if writer:
      writer.close()
  if int(state.step) == total:
    params_dir = files.params
    if os.path.exists(params_dir) and writes:  # left by a run killed before marking final
      shutil.rmtree(params_dir)
    distributed.barrier(f"{round_dir} params")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(params_dir, state.params)
    checkpointer.wait_until_finished()
    distributed.barrier(f"{round_dir} params saved")
    if writes:
      checksums.write(params_dir, files.params_sums)
    cost = {"seconds": round(time.time() - (started or entered), 1),  # with the model's load
            "peak_memory_gb": peak_memory_gb()}
    atomic_write_text(final, json.dumps({"steps": total, "last": history_tail(metrics_path),
                                         "cost": cost}))
    distributed.barrier(f"{round_dir} final")
  return state.params


def load_final_params(round_dir: str, like: Any) -> Any:
  """A finished round's parameters, restored with the shapes and shardings of `like`, after
  their checksums (rounds saved before checksums existed: a finite check) pass."""
  files = RoundDir(round_dir)
  params_dir = files.params
  redo = (f"; delete {files.final} and {params_dir} and rerun: the round "
          "resumes from its last checkpoint")
  sums = files.params_sums
  why = checksums.problem(params_dir, sums) if os.path.exists(sums) else None
  if why:
    raise ValueError(f"the parameters of {round_dir} are damaged: {why}{redo}")
  params = ocp.StandardCheckpointer().restore(params_dir, abstract(like))
  if not _finite(params):
    raise ValueError(f"the parameters in {params_dir} are not finite{redo}")
  return params


def abstract(tree: Any, shardings: Any = None) -> Any:
  """Shapes and dtypes of a tree (arrays or ShapeDtypeStructs) with `shardings`, or with
  each leaf's own: what orbax restores into."""
  if shardings is None:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _finite(tree) -> bool:
  return all(bool(jnp.isfinite(x).all()) for x in jax.tree_util.tree_leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


def _record_sums(round_dir: str, manager: ocp.CheckpointManager) -> None:
  """The sha256 of the step just saved (after the save has finished), and no sums of steps
  orbax has since deleted."""
  manager.wait_until_finished()
  distributed.barrier(f"{round_dir} checkpoint saved")
  if distributed.is_writer():
    step = manager.latest_step()
    sums = RoundDir(round_dir).step_sums(step)
    checksums.write(os.path.join(manager.directory, str(step)), sums)
    kept = {f"{s}.json" for s in manager.all_steps()}
    folder = os.path.dirname(sums)
    for name in os.listdir(folder):
      if name not in kept:
        os.remove(os.path.join(folder, name))
  distributed.barrier(f"{round_dir} checkpoint sums")


def _restore_latest_good(round_dir: str, step_fns, batches: Batches, total: int):
  """(manager, restored state or None, its step): the latest checkpoint whose checksums
  pass, that orbax reads and whose parameters are finite. A damaged one is moved to
  <round_dir>/damaged/ with a warning naming it and the step resumed instead (none left:
  the round starts over, its data being the same)."""
  files = RoundDir(round_dir)
  directory = files.checkpoints
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  while True:
    manager = ocp.CheckpointManager(directory, options=options)
    latest = manager.latest_step()
    if latest is None:
      return manager, None, None
    step_dir, sums = os.path.join(directory, str(latest)), files.step_sums(latest)
    why = checksums.problem(step_dir, sums) if os.path.exists(sums) else None
    if why is None:
      try:
        restored = manager.restore(latest, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract(step_fns.shapes, step_fns.shardings)),
            data=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        why = f"orbax cannot read it ({type(e).__name__}: {str(e)[:200]})"
      else:
        if _finite(restored["state"].params):
          batches.restore(restored["data"])
          logging.info("resumed %s at step %d of %d", round_dir, latest, total)
          return manager, restored["state"], latest
        why = "its parameters are not finite"
    older = [s for s in manager.all_steps() if s < latest]
    aside = files.damaged(latest, int(time.time()))
    logging.warning("checkpoint %s is damaged: %s. Moved to %s; %s.", step_dir, why, aside,
                    f"resuming from step {max(older)} ({os.path.join(directory, str(max(older)))})"
                    if older else "the round starts over")
    manager.close()
    if distributed.is_writer():
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      os.replace(step_dir, aside)
      if os.path.exists(sums):
        os.replace(sums, aside + ".sha256.json")
    distributed.barrier(f"{round_dir} damaged step {latest}")


def history_tail(path: str) -> dict[str, float]:
  with open(path) as f:
    lines = [ln for ln in f if ln.strip()]
  return json.loads(lines[-1]) if lines else {}


def metrics_history(round_dir: str) -> list[dict[str, float]]:
  with open(RoundDir(round_dir).metrics) as f:
    return [json.loads(ln) for ln in f if ln.strip()]

