"""Rewards on hand-made records against the spec's formulas."""

import numpy as np
import pytest

from qpo_jax import rewards
from qpo_jax.tasks.base import CHOICE, MATH


def _zero_shot_records():
  # prompt A: 2 of 3 correct; prompt B: 0 of 1
  return [
      {"prompt": "A", "correct": 1, "gold_nll": 0.5, "nll": 9.0},
      {"prompt": "A", "correct": 1, "gold_nll": 1.5, "nll": 9.0},
      {"prompt": "A", "correct": 0, "gold_nll": 3.0, "nll": 9.0},
      {"prompt": "B", "correct": 0, "gold_nll": 2.0, "nll": 9.0},
  ]


def test_zero_shot_choice():
  out = rewards.with_rewards(_zero_shot_records(), "zero_shot", CHOICE)
  acc_a = 2 / 3
  expected = [10 + 10 * acc_a - 0.5, 10 + 10 * acc_a - 1.5, 0 + 10 * acc_a - 3.0, 0 + 0 - 2.0]
  np.testing.assert_allclose([r["reward"] for r in out], expected)
  assert [r["avg_acc"] for r in out] == pytest.approx([acc_a] * 3 + [0.0])


def test_zero_shot_math_uses_response_nll():
  recs = [{"prompt": "p", "correct": 1, "nll": 0.25}, {"prompt": "p", "correct": 0, "nll": 1.0}]
  out = rewards.with_rewards(recs, "zero_shot", MATH)
  np.testing.assert_allclose([r["reward"] for r in out], [10 + 5 - 0.25, 0 + 5 - 1.0])


def test_few_shot():
  recs = [{"prompt": "p", "acc_q": 0.9}, {"prompt": "p", "acc_q": 0.7},
          {"prompt": "q", "acc_q": 1.0}]
  out = rewards.with_rewards(recs, "few_shot", CHOICE)
  np.testing.assert_allclose([r["reward"] for r in out], [10 * (0.9 + 0.8), 10 * (0.7 + 0.8),
                                                          10 * (1.0 + 1.0)])
  with pytest.raises(ValueError, match="setting"):
    rewards.reward(recs[0], 0.5, "one_shot", CHOICE)


def test_normalizer_round_trip_and_filter():
  values = [3.0, -1.0, 7.0]
  norm = rewards.Normalizer.fit(values)
  assert (norm.min, norm.max) == (-1.0, 7.0)
  np.testing.assert_allclose(norm(values), [50.0, 0.0, 100.0])
  assert norm(3.0) == 50.0 and isinstance(norm(3.0), float)
  assert rewards.Normalizer.from_dict(norm.to_dict()) == norm
  assert rewards.Normalizer(2.0, 2.0)(2.0) == 100.0
  with pytest.raises(ValueError, match="empty"):
    rewards.Normalizer.fit([])
  recs = [{"reward": r} for r in values]
  assert rewards.keep_above(recs, 3.0) == [{"reward": 3.0}, {"reward": 7.0}]
  assert rewards.keep_above(recs, None) == recs
