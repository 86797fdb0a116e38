"""Exploring collection's pieces: rewrite extraction, which prompts are rewritten, candidates."""

import os

import pytest

from qpo_jax import explore
from qpo_jax.models.registry import load_model
from qpo_jax.store.records import Record
from qpo_jax.utils import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("reply,want", [
    ('Here is the new instruction:\n"Name the emotion of the tweet."', "Name the emotion of the tweet."),
    ('"Emotional" should be changed to "say which emotion it shows"', "say which emotion it shows"),
    ("Here's a rewrite: Decide what the author feels.\nMore text", "Decide what the author feels."),
    ("Tell me the feeling.", "Tell me the feeling."),
    ("  \n\n", ""),
])
def test_rewrite_text_takes_the_instruction_out_of_a_reply(reply, want):
  assert explore.rewrite_text(reply) == want


def test_best_prompts_rank_train_accuracy_only():
  def rec(p, c, split="train"):
    return Record(task="t", query=f"{p}{c}{split}", prompt=p, reward=0.0, correct=c, split=split)
  recs = [rec("a", 1), rec("a", 0), rec("b", 1), rec("b", 1), rec("c", 0), rec("", 1),
          rec("c", 1, split="collect"), rec("c", 1, split="collect")]
  assert explore.best_prompts(recs, 2) == ["b", "a"]  # the empty prompt is not rewritten
  assert explore.best_prompts(recs, 10) == ["b", "a", "c"]


def test_candidates_drop_known_and_keep_rewrites_without_queries():
  got = explore.candidates([["x", "known"], ["x", " "], ["y", "x"]], {"known"},
                           rewritten=["z", "known", "x"])
  assert got == {"x": [0, 1, 2], "y": [2], "z": []}


def test_rewrites_are_cleaned_and_fit_the_prompt_length():
  lm = load_model(load_config(os.path.join(ROOT, "configs", "tiny.py")).policy)
  got = explore.rewrites(lm, ["Answer the question.", "Label it."], "Classify the topic.", 3,
                         max_tokens=6, seed=0)
  again = explore.rewrites(lm, ["Answer the question.", "Label it."], "Classify the topic.", 3,
                           max_tokens=6, seed=0)
  assert got == again and len(got) <= 6  # seeded; too long or empty replies dropped
  assert all(t and len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 6 for t in got)
  assert explore.rewrites(lm, [], "Classify the topic.", 3, max_tokens=6, seed=0) == []


@pytest.mark.slow
def test_smollm2_rewrites_are_new_instructions(smollm2):
  """The embedded instruct model, asked as loop.explore asks it, writes new instructions."""
  src = ["Answer the question.", "Label the feeling."]
  got = explore.rewrites(smollm2, src, "Classify the emotion of the tweet as Anger, Joy, "
                         "Optimism or Sadness.", 4, max_tokens=31, seed=0)
  assert len(got) >= 4 and len(set(got) - set(src)) >= 3
