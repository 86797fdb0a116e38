"""Rewards on hand-made records against the spec's formulas."""

import collections

import numpy as np
import pytest

from qpo_jax import rewards
from qpo_jax.rewards import Outcome
from qpo_jax.tasks.base import CHOICE, MATH


def test_zero_shot_choice():
  # prompt A: 2 of 3 correct; prompt B: 0 of 1
  prompts = ["A", "A", "A", "B"]
  outs = [Outcome(correct=c, gold_nll=g, option_nll=(g, 9.0)) for c, g in
          [(1, 0.5), (1, 1.5), (0, 3.0), (0, 2.0)]]
  out = rewards.with_rewards(prompts, outs, "zero_shot", CHOICE)
  acc_a = 2 / 3
  expected = [10 + 10 * acc_a - 0.5, 10 + 10 * acc_a - 1.5, 0 + 10 * acc_a - 3.0, 0 + 0 - 2.0]
  np.testing.assert_allclose([o.reward for o in out], expected)
  assert [o.avg_acc for o in out] == pytest.approx([acc_a] * 3 + [0.0])
  assert [o.gold_nll for o in out] == [o.gold_nll for o in outs]  # the rest is kept
  with pytest.raises(ValueError):  # one prompt per outcome
    rewards.with_rewards(prompts[:3], outs, "zero_shot", CHOICE)


def test_zero_shot_math_uses_response_nll():
  outs = [Outcome(correct=1, response_nll=0.25), Outcome(correct=0, response_nll=1.0)]
  out = rewards.with_rewards(["p", "p"], outs, "zero_shot", MATH)
  np.testing.assert_allclose([o.reward for o in out], [10 + 5 - 0.25, 0 + 5 - 1.0])


def test_few_shot_accuracy_is_the_mean_over_demo_sets():
  outs = [Outcome(per_set=(1,) * 9 + (0,)), Outcome(per_set=(1,) * 7 + (0,) * 3),
          Outcome(per_set=(1,) * 10)]
  assert [o.accuracy for o in outs] == pytest.approx([0.9, 0.7, 1.0])
  out = rewards.with_rewards(["p", "p", "q"], outs, "few_shot", CHOICE)
  np.testing.assert_allclose([o.reward for o in out], [10 * (0.9 + 0.8), 10 * (0.7 + 0.8),
                                                       10 * (1.0 + 1.0)])
  with pytest.raises(ValueError, match="setting"):
    rewards.reward(outs[0], 0.5, "one_shot", CHOICE)


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
  assert rewards.expert_filter(recs, 3.0) == [{"reward": 3.0}, {"reward": 7.0}]
  assert rewards.expert_filter(recs) == recs


def test_collection_batch_accuracy_is_the_batch_not_each_prompt():
  """Collected prompts are nearly unique per query: grouping by prompt would make avg_acc the
  record's own correctness (R = 20*correct - NLL). A collection batch uses its accuracy."""
  prompts = [f"p{i}" for i in range(4)]
  batch = [Outcome(correct=c, gold_nll=1.0) for c in [1, 1, 0, 0]]
  out = rewards.with_rewards(prompts, batch, "zero_shot", CHOICE, by_prompt=False)
  assert [o.avg_acc for o in out] == [0.5] * 4
  np.testing.assert_allclose([o.reward for o in out], [14.0, 14.0, 4.0, 4.0])
  per_prompt = rewards.with_rewards(prompts, batch, "zero_shot", CHOICE)  # the old rule
  assert [o.avg_acc for o in per_prompt] == [1.0, 1.0, 0.0, 0.0]


def test_normalizer_clips_later_records_to_d0_range():
  norm = rewards.Normalizer(0.0, 10.0)
  np.testing.assert_allclose(norm([-5.0, 5.0, 25.0]), [0.0, 50.0, 100.0])


def test_expert_filter_threshold_and_top_fraction_per_query():
  recs = [{"query_id": q, "query": "", "reward": r} for q, r in
          [("a", 1.0), ("a", 9.0), ("a", 5.0), ("a", 7.0), ("b", 2.0), ("b", 3.0), ("c", 0.5)]]
  top = rewards.top_per_query(recs, 0.5)  # a: 2 of 4, b: 1 of 2, c: its only record
  assert [(r["query_id"], r["reward"]) for r in top] == [("a", 9.0), ("a", 7.0), ("b", 3.0),
                                                          ("c", 0.5)]
  assert rewards.top_per_query(recs, None) == recs
  both = rewards.expert_filter(recs, threshold=2.5, top_fraction=0.5)
  assert [(r["query_id"], r["reward"]) for r in both] == [("a", 9.0), ("a", 7.0), ("b", 3.0)]
  with pytest.raises(ValueError, match="top_fraction"):
    rewards.top_per_query(recs, 1.5)
  with pytest.raises(ValueError, match="rank_by"):
    rewards.expert_filter(recs, rank_by="nll")


def test_expert_filter_by_advantage_keeps_what_a_prompt_adds_for_the_query():
  """rank_by="advantage": a prompt good for every query ("all") loses to one that is unusually
  good for this query, while rank_by="reward" keeps the generally good one everywhere. The
  prompt means are over all records, before the threshold drops any."""
  grid = {("q1", "all"): 9.0, ("q1", "x"): 8.0, ("q1", "y"): 0.0,
          ("q2", "all"): 9.0, ("q2", "x"): 0.0, ("q2", "y"): 8.5,
          ("q3", "all"): 9.0, ("q3", "x"): 1.0, ("q3", "y"): 1.0}
  recs = [{"query_id": q, "query": "", "prompt": p, "reward": r} for (q, p), r in grid.items()]
  # q1's rewards minus each prompt's mean on q2 and q3
  np.testing.assert_allclose(rewards.advantages(recs)[:3], [0.0, 7.5, -4.75])
  pick = lambda out: [(r["query_id"], r["prompt"]) for r in out]  # noqa: E731
  assert pick(rewards.expert_filter(recs, 5.0, 0.3)) == [("q1", "all"), ("q2", "all"),
                                                         ("q3", "all")]
  assert pick(rewards.expert_filter(recs, 5.0, 0.3, "advantage")) == [
      ("q1", "x"), ("q2", "y"), ("q3", "all")]
  # a prompt only one record has is measured against the mean of all the other records
  novel = recs + [{"query_id": "q4", "query": "", "prompt": "new", "reward": 9.0}]
  assert rewards.advantages(novel)[-1] == pytest.approx(9.0 - 45.5 / 9)


def test_query_centred_returns_say_how_a_prompt_did_against_its_querys_others():
  """offline.returns="query_centred": 50 + return - the query's mean, clipped to [0, 100];
  the same prompt gets a high return where it beat the query's others, a low one where
  it did worse, whatever the query's level."""
  queries = ["a", "a", "a", "b", "b", "c"]
  out = rewards.query_centred(queries, [90.0, 30.0, 30.0, 40.0, 20.0, 70.0])
  np.testing.assert_allclose(out, [90.0, 30.0, 30.0, 60.0, 40.0, 50.0])
  np.testing.assert_allclose(rewards.query_centred(["a", "a"], [100.0, 0.0]), [100.0, 0.0])
  np.testing.assert_allclose(rewards.query_centred(["a", "a", "a", "a"], [100.0, 0, 0, 0]),
                             [100.0, 25.0, 25.0, 25.0])


def test_per_query_sample_keeps_k_of_each_query_the_same_for_a_seed():
  recs = [{"query_id": q, "query": "", "reward": float(i)}
          for i, q in enumerate("aaaaabbbbbbc")]
  one = rewards.per_query_sample(recs, 3, seed=1)
  counts = collections.Counter(r["query_id"] for r in one)
  assert counts == {"a": 3, "b": 3, "c": 1}
  assert one == rewards.per_query_sample(recs, 3, seed=1)
  assert [r["reward"] for r in one] == sorted(r["reward"] for r in one)  # in order
  draws = {tuple(r["reward"] for r in rewards.per_query_sample(recs, 3, seed=s))
           for s in range(8)}
  assert len(draws) > 1  # the seed draws
  assert rewards.per_query_sample(recs, 0, seed=1) == recs
  assert rewards.per_query_sample(recs, 6, seed=1) == recs
  with pytest.raises(ValueError, match="rows_per_query"):
    rewards.per_query_sample(recs, -1, seed=1)


def test_choice_nll_term_is_the_gold_options_share():
  """nll_term="choice": -log softmax(-option NLLs)[gold], blind to a shift shared by all
  options (how much the prompt makes a chat model reply with a bare label)."""
  rec = Outcome(correct=1, option_nll=(0.5, 2.0, 3.0), gold_nll=0.5)
  want = -np.log(np.exp(-0.5) / np.exp(-np.array([0.5, 2.0, 3.0])).sum())
  assert rewards.choice_nll(rec.option_nll, rec.gold_nll) == pytest.approx(want)
  shifted = Outcome(correct=1, option_nll=(4.5, 6.0, 7.0), gold_nll=4.5)
  for r in (rec, shifted):
    assert rewards.reward(r, 0.5, "zero_shot", CHOICE, "choice") == pytest.approx(15 - want)
  assert rewards.reward(shifted, 0.5, "zero_shot", CHOICE) == pytest.approx(15 - 4.5)  # token
  with pytest.raises(ValueError, match="nll_term"):
    rewards.reward(rec, 0.5, "zero_shot", CHOICE, "mean")
