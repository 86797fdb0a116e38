"""A run's world, built once per process and handed to every stage.

A stage used to rebuild what it needed from (config, workdir): the task's splits, the
source prompts, the target, the policy's pretrained backbone, the round it had just
trained (read back from disk). `Run` makes each of these the first time a stage asks
and keeps it, so a `--mode=loop` process reads the task and the source prompts once,
loads the target once (released around a round's training, whose optimiser state is
the memory peak, and reloaded on its next call), and hands the round it trained to
the collection and to the next round in memory.

Policy parameters are held one round at a time: a second copy of the model would
sit beside the training state at the peak. The pretrained arrays are not kept at
all: training takes over their buffers (donation), so each caller gets fresh ones.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections

from qpo_jax import fingerprint, sharding, stages, utils
from qpo_jax import prompts as prompts_lib
from qpo_jax.checkpoints.registry import load_model
from qpo_jax.eval_cache import EvalCache
from qpo_jax.policy import trainer
from qpo_jax.policy.model import pretrained_policy
from qpo_jax.stages import Stage
from qpo_jax.store import dataset
from qpo_jax.targets import Target, build_target
from qpo_jax.tasks import base as task_base, load_splits, task_of
from qpo_jax.workdir import Workdir


@dataclasses.dataclass(eq=False)
class Run:
  """(config, workdir) and what the stages make of them, each built on first use.

  `given_target` is a caller's own target (tests, a notebook's); otherwise the config's
  is built when a stage first asks for it. Without a workdir a run only reads its task
  (`qpo_jax.queries`).
  """

  config: ml_collections.ConfigDict
  workdir: str = ""
  given_target: dataclasses.InitVar[Target | None] = None

  def __post_init__(self, given_target: Target | None):
    self.wd = Workdir(self.workdir)
    self._target = given_target
    self._held: tuple[int, Any] | None = None  # (round, its trained parameters)
    self._policy: tuple[Any, Any, Any] | None = None  # (cfg, tokenizer, parameter shapes)
    self._lm = None  # the frozen pretrained LM, while a stage uses it

  # -- the task and the target ------------------------------------------------------------

  @functools.cached_property
  def task(self) -> task_base.Task:
    return task_of(self.config.task)

  @functools.cached_property
  def splits(self) -> dict[str, list[task_base.Example]]:
    """Every split, as the task's split rules cut them (tasks.load_splits)."""
    return load_splits(self.config.task)[1]

  @functools.cached_property
  def source_prompts(self) -> list[tuple[str, str]]:
    """(source, prompt) pairs D_0 is built on and the report's baselines choose among."""
    return prompts_lib.source_prompts(self.config.offline, self.task)

  @functools.cached_property
  def mesh(self):
    return sharding.make_mesh(self.config.mesh)

  @functools.cached_property
  def cache(self) -> EvalCache:
    os.makedirs(self.workdir, exist_ok=True)
    return EvalCache.of_workdir(self.workdir)

  @property
  def target(self) -> Target:
    if self._target is None:
      self._target = build_target(self.config.target, mesh=self.mesh)
    return self._target

  def release_for_training(self) -> None:
    """Frees what would sit beside a training state: a local target's parameters (its
    next call reloads them, ~5 s), the frozen LM and the compiled programs (recompiled,
    from the workdir's XLA cache, when next needed), and returns freed memory to the OS."""
    if self._target is not None and hasattr(self._target, "release"):
      self._target.release()
    self._lm = None
    jax.clear_caches()  # the scoring's programs, one per shape bucket: 0.3 GiB of round 1's peak
    utils.return_freed_memory()

  # -- the workdir's stages ---------------------------------------------------------------

  def claim(self, stage: Stage, record: bool = True) -> None:
    """Checks a stage's recorded config fields against the config (fingerprint.py) and,
    for a stage about to start (`record`), records them if none are."""
    (fingerprint.claim if record else fingerprint.check)(
        stage.record(self.wd), fingerprint.stage_fields(self.config, stage), stage.title,
        stage.artifacts(self.wd))

  def check_workdir(self) -> None:
    """Every stage already in the workdir against the config, before any work starts."""
    for t in self.wd.datasets():
      dataset.check_complete(self.wd.data(t))
    for stage in stages.of_run(self.wd.last_recorded_loop()):
      self.claim(stage, record=False)

  # -- the policy -------------------------------------------------------------------------

  def pretrained_policy(self) -> tuple[Any, Any, Any]:
    """(cfg, fresh pretrained policy parameters, tokenizer); any held round is dropped
    first (one policy in memory)."""
    self._held = None
    cfg, params, tok = pretrained_policy(self.config.policy, jax.random.key(self.config.seed))
    if tok is None:
      raise ValueError(f"policy {self.config.policy.name!r} has no tokenizer; set "
                       "policy.tokenizer_path")
    self._policy = (cfg, tok, trainer.abstract(params))
    return cfg, params, tok

  def policy_spec(self) -> tuple[Any, Any, Any]:
    """(cfg, tokenizer, parameter shapes) of the policy; the backbone is read for them
    only if no stage of this process has read it."""
    if self._policy is None:
      self.pretrained_policy()  # its parameters are dropped here
    return self._policy

  def round_params(self, t: int) -> Any:
    """Round t's trained parameters: the held ones if they are t's, else read from disk
    (checksummed) and held instead."""
    if self._held is not None and self._held[0] == t:
      return self._held[1]
    _, _, like = self.policy_spec()
    self._held = None  # the old round goes before the new one comes
    params = trainer.load_final_params(self.wd.round(t), like)
    self._held = (t, params)
    return params

  def take_round(self, t: int) -> Any:
    """Round t's parameters for a caller that consumes them (round t + 1's training
    takes over their buffers); no longer held."""
    params = self.round_params(t)
    self._held = None
    return params

  def hold_round(self, t: int, params: Any) -> None:
    """The parameters a round just trained, for the next stage. On a mesh of several
    devices they are laid out for training, so they are dropped and a sampler reads the
    round from disk with the single-device layout it has always decoded with."""
    self._held = (t, params) if self.mesh.size == 1 else None

  def drop_round(self) -> None:
    """Frees the held round (a stage that needs no policy after this)."""
    self._held = None

  @property
  def held_round(self) -> int | None:
    return self._held[0] if self._held is not None else None

  def frozen_lm(self):
    """The policy's pretrained LM without adapters (explore's prompt perplexity, the
    report's frozen encoder), read once and kept until released or taken."""
    if self._lm is None:
      self._lm = load_model({**self.config.policy, "lora_rank": 0})
    return self._lm

  def take_frozen_lm(self):
    """The frozen LM for a caller that trains or frees it; no longer kept."""
    lm, self._lm = self.frozen_lm(), None
    return lm
