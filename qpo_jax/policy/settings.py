"""The policy's training and sampling settings as typed values, read from a config's `train`
and `sample` sections once; the trainer, the train step, the sampler and the fine-tuned
baselines take these, not the config.

Numeric ranges are checked with the rest of the config (config_rules.py) before any mode
starts; what only this layer knows (the schedule's names) is checked here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from qpo_jax.config_rules import typed

SCHEDULES = ("step", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  learning_rate: float  # round 1 peak learning rate
  schedule: str  # step (x decay_rate every decay_every_epochs) or cosine
  decay_every_epochs: float
  decay_rate: float
  warmup_steps: int  # cosine only
  epochs: float  # round 1 epochs
  batch_size: int
  grad_clip: float  # global-norm clipping
  weight_decay: float  # AdamW
  grad_accum: int  # micro-batches per update
  freeze_backbone: bool  # train the heads (and LoRA adapters) only
  pad_multiple: int  # length-bucketed batches (0: fixed shapes)
  log_every: int
  checkpoint_every: int
  query_len: int  # Lq, policy tokens of a query
  prompt_len: int  # Lp, policy tokens of a prompt (+ EOS)
  normalize: bool  # min-max normalised returns
  finetune_lr: float  # rounds >= 2
  finetune_epochs: float  # rounds >= 2

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"train.schedule={self.schedule!r} is not 'step' or 'cosine'")

  @classmethod
  def of(cls, train: Mapping[str, Any]) -> TrainSettings:
    """From a config's `train` section."""
    return typed(cls, train, "train")

  def for_round(self, t: int) -> TrainSettings:
    """Round t's settings: rounds after the first fine-tune (finetune_lr, finetune_epochs)."""
    if t <= 1:
      return self
    return dataclasses.replace(self, learning_rate=self.finetune_lr, epochs=self.finetune_epochs)


@dataclasses.dataclass(frozen=True)
class Decoding:
  temperature: float  # 0: greedy
  top_k: int  # 0: all tokens
  top_p: float  # 1: all tokens


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """How a policy writes prompts: greedy-by-default for test prompts, sampled for collection."""
  target_return: float  # R*, the return the policy is conditioned on
  num_samples: int  # collection: prompts per query
  batch_size: int  # queries per sampling batch
  test: Decoding
  collect: Decoding

  @classmethod
  def of(cls, sample: Mapping[str, Any]) -> SampleSettings:
    """From a config's `sample` section (its `test` and `collect` subsections)."""
    return typed(cls, sample, "sample")
