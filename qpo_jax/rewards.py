"""The spec's rewards, the prompt's batch accuracy, min-max normalisation and filtering.

  zero-shot choice: R = 10*correct + 10*avg_acc(p) - NLL(gold option | p, q)
  zero-shot math:   R = 10*correct + 10*avg_acc(p) - NLL(response)
  few-shot:         R = 10*(acc_q(p) + avg_acc(p))

avg_acc(p) is the prompt's mean accuracy over the records it was evaluated on
in the same batch. Normalisation R <- 100*(R - min)/(max - min) uses a min
and max computed on the data and stored with it (the official code reads them
from a file it never published).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from qpo_jax.tasks.base import CHOICE


def prompt_accuracy(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Mean accuracy of each prompt over the records given (the spec's avg_acc)."""
  sums: dict[str, list[float]] = {}
  for r in records:
    sums.setdefault(r["prompt"], []).append(r["acc_q"] if "acc_q" in r else r["correct"])
  return {p: float(np.mean(v)) for p, v in sums.items()}


def reward(record: Mapping[str, Any], avg_acc: float, setting: str, kind: str) -> float:
  """R of one evaluated record (its outcome fields as evaluation.py writes them)."""
  if setting == "few_shot":
    return 10.0 * (record["acc_q"] + avg_acc)
  if setting != "zero_shot":
    raise ValueError(f"setting {setting!r} is not zero_shot or few_shot")
  penalty = record["gold_nll"] if kind == CHOICE else record["nll"]
  return 10.0 * record["correct"] + 10.0 * avg_acc - float(penalty)


def with_rewards(records: Sequence[Mapping[str, Any]], setting: str,
                 kind: str) -> list[dict[str, Any]]:
  """Copies of the records with `avg_acc` and `reward` filled in, over this batch."""
  acc = prompt_accuracy(records)
  out = []
  for r in records:
    r = dict(r)
    r["avg_acc"] = acc[r["prompt"]]
    r["reward"] = reward(r, r["avg_acc"], setting, kind)
    out.append(r)
  return out


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Min-max normalisation to [0, 100]; fitted on a dataset and stored with it."""

  min: float
  max: float

  @classmethod
  def fit(cls, rewards: Iterable[float]) -> "Normalizer":
    values = np.asarray(list(rewards), np.float64)
    if values.size == 0:
      raise ValueError("cannot fit reward normalisation on an empty dataset")
    return cls(float(values.min()), float(values.max()))

  def __call__(self, r):
    """Normalised reward(s); a degenerate range (max == min) maps everything to 100."""
    r = np.asarray(r, np.float64)
    span = self.max - self.min
    out = np.full_like(r, 100.0) if span <= 0 else 100.0 * (r - self.min) / span
    return float(out) if out.ndim == 0 else out

  def to_dict(self) -> dict[str, float]:
    return {"min": self.min, "max": self.max}

  @classmethod
  def from_dict(cls, d: Mapping[str, float]) -> "Normalizer":
    return cls(float(d["min"]), float(d["max"]))


def keep_above(records: Sequence[Any], threshold: float | None) -> list[Any]:
  """The spec's "expert" filtering: drop records (dicts or `Record`s) whose reward is below."""
  if threshold is None:
    return list(records)
  value = lambda r: r["reward"] if isinstance(r, Mapping) else r.reward  # noqa: E731
  return [r for r in records if value(r) >= threshold]
