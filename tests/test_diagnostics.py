"""Writing-or-routing statistics and the label-routing baseline, on hand-made data."""

import numpy as np
import pytest

from qpo_jax import diagnostics
from qpo_jax.baselines import class_best_prompts
from qpo_jax.store.records import Record


def test_purity_is_the_share_of_the_most_predicted_label():
  got = diagnostics.label_purity(["a", "a", "a", "a", "b", "b"], [2, 2, 2, 0, 1, 3])
  assert got["a"] == diagnostics.Purity(0.75, 2, 4)
  assert got["b"].purity == 0.5 and got["b"].majority == 1  # a tie goes to the lower label


@pytest.mark.parametrize("prompt,new", [
    ("Options: Sadness, Optimism, Joy, Anger.", False),  # a source prompt
    ("options sadness optimism", False),  # its first words, case and punctuation folded
    ("Optimism, Joy", False),  # words from its middle
    ("Options: Joy, Sadness, Optimism, Anger.", True),  # reordered: a new text
    ("Options: Sadness, Optimism, Joy, Anger. Answer the question.", True),  # two joined
    ("Sad", True),  # a piece of a word is not a run of whole words
    ("", False),
])
def test_new_text_is_neither_a_source_prompt_nor_a_run_of_its_words(prompt, new):
  sources = ["Options: Sadness, Optimism, Joy, Anger.", "Answer the question.", ""]
  assert diagnostics.is_new_text(prompt, sources) == new


def test_routing_counts_label_forcing_prompts_and_followed_answers():
  purity = {"force0": diagnostics.Purity(1.0, 0, 10), "mixed": diagnostics.Purity(0.5, 2, 10)}
  got = diagnostics.routing(["force0", "force0", "mixed", "unmeasured"], [0, 1, 2, 3], purity)
  assert got == {"pure_fraction": 2 / 3, "follows_majority": 2 / 3, "measured": 0.75}


def test_routing_scores_the_label_router_that_a_methods_prompts_amount_to():
  purity = {"force0": diagnostics.Purity(1.0, 0, 10), "mixed": diagnostics.Purity(0.5, 2, 10)}
  prompts = ["force0", "force0", "mixed", "mixed", "unmeasured"]
  # label y's best D_0 prompt on each of the 5 queries; label 2 has no route
  route = {0: [1, 0, 1, 1, 1], 1: [0, 1, 0, 0, 0]}
  got = diagnostics.routing(prompts, [0, 0, 2, 1, 3], purity, gold=[0, 1, 2, 0, 0],
                            label_route=route)
  assert got["majority_is_gold"] == 0.5  # queries 0 and 2 of the 4 measured
  assert got["as_label_router"] == 0.25  # query 0 by route 0 (1), query 1 by route 0 (0),
  # queries 2 and 3 by label 2, which has no route (0)
  assert "as_label_router" not in diagnostics.routing(prompts, [0] * 5, purity, gold=[0] * 5)


def test_writing_compares_new_prompts_with_every_source_prompt_on_the_same_query():
  sources = ["s1", "s2"]
  pool = np.asarray([[1, 0, 0, 0], [0, 1, 0, 0]], float)  # queries 2 and 3: no source is right
  pool_nll = np.asarray([[0.1, 2.0, 3.0, 1.0], [2.0, 0.2, 2.5, 1.0]])
  got = diagnostics.writing(["s1", "new a", "new a", "new b"], [1, 0, 1, 1], pool,
                            [0.5, 0.3, 0.4, 1.5], pool_nll, sources)
  assert got["new_fraction"] == 0.75 and got["new_distinct"] == 2
  assert got["accuracy_with_new"] == pytest.approx(2 / 3) and got["accuracy_with_pool"] == 1.0
  assert got["new_right_where_no_source_is"] == pytest.approx(2 / 3)  # queries 2, 3 of 1..3
  assert got["new_below_every_source_nll"] == pytest.approx(1 / 3)  # only query 2 (0.4 < 2.5)
  rows = diagnostics.examples(["new a", "new a", "new b", "s1"], [1, 0, 1, 1], sources,
                              {"new a": diagnostics.Purity(0.95, 1, 40)}, ["x", "y"])
  assert rows[0] == {"prompt": "new a", "queries": 2, "accuracy": 0.5, "purity": 0.95,
                     "majority": "y", "purity_queries": 40}
  assert rows[1]["prompt"] == "new b" and "purity" not in rows[1]


def test_each_class_gets_the_prompt_best_on_it():
  recs = [Record(task="t", query=f"q{i}", prompt=p, reward=0.0, label=label, correct=c)
          for i, (p, label, c) in enumerate([("a", 0, 1), ("b", 0, 0), ("a", 1, 0), ("b", 1, 1),
                                             ("c", 1, 1)])]
  assert class_best_prompts(recs) == {0: "a", 1: "b"}  # b and c tie on class 1: sorted first
