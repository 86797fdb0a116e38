"""The one record schema of offline data, as `tf.train.Example` protos.

A `Record` is one evaluated (query, prompt) pair: what was asked, which prompt
and where it came from, which target and setting, the raw outcomes, the
reward and the loop that produced it. Every field is always written (absent
numbers are NaN, absent ids -1), so readers never guess. The proto classes
come from tensorflow-datasets, which ships them without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tensorflow_datasets.proto import tf_example_generated_pb2 as example_pb2

from qpo_jax.rewards import Outcome

SCHEMA_VERSION = 1
NAN = float("nan")


@dataclasses.dataclass
class Record:
  """One evaluated pair; see the module docstring. Outcome fields follow evaluation.py."""

  task: str
  query: str
  prompt: str
  reward: float
  split: str = "train"
  query_id: str = ""
  gold: str = ""  # label name or gold number, as text
  label: int = -1
  prompt_source: str = ""
  target: str = ""
  setting: str = "zero_shot"
  correct: float = NAN  # zero-shot 0/1
  pred: int = -1
  option_nll: tuple[float, ...] = ()
  gold_nll: float = NAN
  answer: str = ""
  response: str = ""
  response_nll: float = NAN
  acc_q: float = NAN  # few-shot: accuracy over demo sets
  avg_acc: float = NAN  # the prompt's accuracy over its evaluated batch
  loop: int = 0

  @property
  def accuracy(self) -> float:
    """Few-shot acc_q when the record has one, else zero-shot correctness."""
    return self.correct if math.isnan(self.acc_q) else self.acc_q

  def key(self) -> tuple[str, str, str, str, str]:
    """Identity for dedupe across loops: the same pair under the same target and setting."""
    return (self.task, self.setting, self.target, self.query_id or self.query, self.prompt)


_FIELDS = {f.name: f for f in dataclasses.fields(Record)}
_STR = {n for n, f in _FIELDS.items() if f.type == "str"}
_INT = {n for n, f in _FIELDS.items() if f.type == "int"}
_FLOAT = {n for n, f in _FIELDS.items() if f.type == "float"}
_FLOATS = {"option_nll"}


def to_example(rec: Record) -> bytes:
  ex = example_pb2.Example()
  feats = ex.features.feature
  for name in _FIELDS:
    value = getattr(rec, name)
    if name in _STR:
      feats[name].bytes_list.value.append(str(value).encode("utf-8"))
    elif name in _INT:
      feats[name].int64_list.value.append(int(value))
    elif name in _FLOAT:
      feats[name].float_list.value.append(float(value))
    else:
      feats[name].float_list.value.extend(float(v) for v in value)
  feats["schema_version"].int64_list.value.append(SCHEMA_VERSION)
  return ex.SerializeToString()


def from_example(data: bytes, where: str = "") -> Record:
  """Parses one serialized Example; a missing field or foreign schema names `where`."""
  ex = example_pb2.Example()
  try:
    ex.ParseFromString(data)
  except Exception as e:  # protobuf raises DecodeError, a private class
    raise ValueError(f"{where}: not a tf.train.Example ({e})") from None
  feats = ex.features.feature
  version = feats["schema_version"].int64_list.value if "schema_version" in feats else []
  if list(version) != [SCHEMA_VERSION]:
    raise ValueError(f"{where}: schema version {list(version)}, this code reads {SCHEMA_VERSION}")
  kwargs: dict[str, Any] = {}
  for name in _FIELDS:
    if name not in feats:
      raise ValueError(f"{where}: field {name!r} is missing")
    f = feats[name]
    if name in _STR:
      kwargs[name] = f.bytes_list.value[0].decode("utf-8")
    elif name in _INT:
      kwargs[name] = int(f.int64_list.value[0])
    elif name in _FLOATS:
      kwargs[name] = tuple(float(v) for v in f.float_list.value)
    else:
      kwargs[name] = float(f.float_list.value[0])
  return Record(**kwargs)


def record_from_outcome(*, task, example, prompt: str, outcome: Outcome, target: str,
                        setting: str, split: str, prompt_source: str, loop: int) -> Record:
  """A Record from a rewarded `Outcome` (rewards.with_rewards)."""
  from qpo_jax.tasks.base import CHOICE, format_number  # pylint: disable=g-import-not-at-top

  gold = (task.options(example)[example.label] if task.kind == CHOICE
          else format_number(example.answer))
  rec = Record(task=task.name, query=example.query, prompt=prompt, reward=outcome.reward,
               split=split, query_id=example.uid, gold=gold,
               label=example.label if example.label is not None else -1,
               prompt_source=prompt_source, target=target, setting=setting,
               avg_acc=outcome.avg_acc, loop=loop)
  if outcome.per_set:
    rec.acc_q = outcome.accuracy
  elif task.kind == CHOICE:
    rec.correct, rec.pred = outcome.correct, outcome.pred
    rec.option_nll, rec.gold_nll = outcome.option_nll, outcome.gold_nll
  else:
    rec.correct, rec.response = outcome.correct, outcome.response
    rec.answer = format_number(outcome.answer)
    rec.response_nll = outcome.response_nll
  return rec


def same(a: Record, b: Record) -> bool:
  """Field-by-field equality where NaN equals NaN (for round-trip checks)."""
  for name in _FIELDS:
    x, y = getattr(a, name), getattr(b, name)
    if isinstance(x, float) and math.isnan(x) and isinstance(y, float) and math.isnan(y):
      continue
    if name in _FLOAT or name in _FLOATS:
      xs, ys = (x,) if name in _FLOAT else x, (y,) if name in _FLOAT else y
      if len(xs) != len(ys) or any(abs(p - q) > 1e-6 * max(1, abs(p)) for p, q in zip(xs, ys)):
        return False
    elif x != y:
      return False
  return True
