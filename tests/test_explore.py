"""Exploring collection's pieces: rewrite extraction, which prompts are rewritten, candidates."""


import numpy as np
import pytest

from qpo_jax import explore
from qpo_jax.checkpoints.registry import load_model
from qpo_jax.store.records import Record

from tests.helpers import repo_config


@pytest.mark.parametrize("reply,want", [
    ('Here is the new instruction:\n"Name the emotion of the tweet."', "Name the emotion of the tweet."),
    ('"Emotional" should be changed to "say which emotion it shows"', "say which emotion it shows"),
    ("Here's a rewrite: Decide what the author feels.\nMore text", "Decide what the author feels."),
    ("Tell me the feeling.", "Tell me the feeling."),
    ("  \n\n", ""),
])
def test_rewrite_text_takes_the_instruction_out_of_a_reply(reply, want):
  assert explore.rewrite_text(reply) == want


def test_parent_prompts_are_those_kept_for_the_most_queries():
  def rec(p, q, c=1.0):
    return Record(task="t", query=q, query_id=q, prompt=p, reward=0.0, correct=c)
  records = [rec("a", "q1"), rec("a", "q2", 0.0), rec("b", "q1"), rec("c", "q3"), rec("", "q4")]
  kept = [rec("a", "q1"), rec("b", "q2"), rec("b", "q3"), rec("c", "q1"), rec("", "q4"),
          rec("b", "q3")]  # b for two queries; a and c one each, c more accurate
  assert explore.parent_prompts(kept, records, 2) == ["b", "c"]
  assert explore.parent_prompts(kept, records, 9) == ["b", "c", "a"]  # "" is never a parent


def test_phrases_cut_at_punctuation_and_conjunctions_and_join_back():
  for text in ("Options: Sadness, Optimism, Joy, Anger.", "Anger, joy, optimism or sadness?",
               "Is it (A) or (B)? Answer in one word.", "Answer the question."):
    assert "".join(explore.phrases(text)) == text
  assert explore.phrases("Options: Sadness, Joy.")[::2] == ["Options", "Sadness", "Joy", ""]
  assert explore.phrases("Anger or sadness and joy")[::2] == ["Anger", "sadness", "joy"]


def test_each_edit_moves_drops_or_adds_whole_phrases():
  parts = explore.phrases("Options: Sadness, Optimism, Joy, Anger.")
  donor = explore.phrases("Answer the question: in one word.")
  order = ["Options", "Sadness", "Optimism", "Joy", "Anger"]
  seen = set()
  for seed in range(60):
    out = explore.edit(parts, donor, np.random.default_rng(seed))
    got = [w for w in explore.phrases(out)[::2] if w]
    tails = (["Answer the question", "in one word"], ["in one word"], [])
    if sorted(got) == sorted(order) and got != order:
      seen.add("swap")  # the same phrases in another order
    elif len(got) == 4 and [w for w in order if w in got] == got:
      seen.add("delete")
    elif len(got) == 6 and [w for w in got if w in order] == order:
      seen.add("add")
    elif any(got[:len(got) - len(t)] == order[:len(got) - len(t)] and got[len(got) - len(t):] == t
             for t in tails):
      seen.add("cross over")  # the parent's first phrases, then the donor's last (or none)
    else:
      raise AssertionError(f"seed {seed}: {out!r} is not one phrase edit")
  assert seen == {"swap", "delete", "add", "cross over"}


def test_edits_are_new_distinct_seeded_and_skip_unsplittable_prompts():
  parents = ["Options: Sadness, Optimism, Joy, Anger.", "Anger, joy, optimism or sadness?", ""]
  got = explore.edits(parents, 20, seed=3)
  assert got == explore.edits(parents, 20, seed=3) and got != explore.edits(parents, 20, seed=4)
  assert len(got) == len(set(got)) == 20 and not set(got) & set(parents)
  assert explore.edits(["Classify."], 5, seed=0) == []  # one phrase: nothing to move or drop
  assert explore.edits([], 5, seed=0) == []


def test_group_gain_rewards_the_best_prompt_for_some_group_not_on_average():
  groups = [0, 0, 1, 1]
  pool = {"general": {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0},  # 1.0 on group 0, 0.5 on group 1
          "partial": {2: 1.0}}  # scored on one query of group 1 only: 1.0 there
  assert explore.group_gain([0, 0, 1, 1], pool, groups) == pytest.approx(0.0)
  assert explore.group_gain([1, 1, 0, 0], pool, groups) == pytest.approx(0.0)
  assert explore.group_gain([0, 0, 1, 1], {"g": pool["general"]}, groups) == pytest.approx(0.5)
  assert explore.group_gain([0, 0, 0, 0], pool, groups) == pytest.approx(-1.0)
  assert explore.group_gain([1, 1], {}, [0, 0]) == pytest.approx(1.0)  # empty pool: 0


def test_candidates_drop_known_and_keep_rewrites_without_queries():
  got = explore.candidates([["x", "known"], ["x", " "], ["y", "x"]], {"known"},
                           written=["z", "known", "x"])
  assert got == {"x": [0, 1, 2], "y": [2], "z": []}


@pytest.mark.integration
def test_rewrites_are_cleaned_and_fit_the_prompt_length():
  lm = load_model(repo_config("tiny.py").policy)
  got = explore.rewrites(lm, ["Answer the question.", "Label it."], "Classify the topic.", 3,
                         max_tokens=6, seed=0)
  again = explore.rewrites(lm, ["Answer the question.", "Label it."], "Classify the topic.", 3,
                           max_tokens=6, seed=0)
  assert got == again and len(got) <= 6  # seeded; too long or empty replies dropped
  assert all(t and len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 6 for t in got)
  assert explore.rewrites(lm, [], "Classify the topic.", 3, max_tokens=6, seed=0) == []


@pytest.mark.real_model
def test_smollm2_rewrites_are_new_instructions(smollm2):
  """The embedded instruct model, asked as loop.explore asks it, writes new instructions."""
  src = ["Answer the question.", "Label the feeling."]
  got = explore.rewrites(smollm2, src, "Classify the emotion of the tweet as Anger, Joy, "
                         "Optimism or Sadness.", 4, max_tokens=31, seed=0)
  assert len(got) >= 4 and len(set(got) - set(src)) >= 3
