"""Target evaluation: local backend numerics, the cache, few-shot, math, sharding."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from qpo_jax import evaluation, sharding
from qpo_jax.eval_cache import EvalCache
from qpo_jax.checkpoints.registry import load_model
from qpo_jax.targets import Generation, LocalTarget
from qpo_jax.testing import naive_option_nll
from qpo_jax.targets.server import ModelServer
from qpo_jax.tasks import base, get_task


@pytest.fixture(scope="module")
def tiny_lm():
  return load_model({"name": "random", "preset": "tiny-llama", "tokenizer": "smollm2", "seed": 3})


def _topics(n=6):
  task = get_task("topics")
  rows = [task.to_example(r, f"all:{i}") for i, r in enumerate(task.builtin_rows(n, 1))]
  return task, rows


@pytest.mark.integration
@pytest.mark.parametrize("chat", [True, False])
def test_choice_outcomes_match_naive_scoring(tiny_lm, chat):
  task, rows = _topics(5)
  target = LocalTarget(tiny_lm, chat=chat, batch_size=4)
  outcomes = evaluation.evaluate_pairs(task, target, [(ex, "Pick the topic.") for ex in rows])
  for ex, out in zip(rows, outcomes):
    prefix = target.prefix_ids(task.render(ex, "Pick the topic."))
    naive = [naive_option_nll(tiny_lm, prefix, target.option_ids(o)) for o in task.options(ex)]
    np.testing.assert_allclose(out.option_nll, naive, atol=2e-4)
    assert out.pred == int(np.argmin(naive))
    assert out.correct == int(out.pred == ex.label) == out.accuracy
    assert out.gold_nll == pytest.approx(naive[ex.label], abs=2e-4)
  if chat:  # the chat template wraps the user turn; the option is the assistant reply
    text = tiny_lm.tokenizer.decode(target.prefix_ids("hi"))
    assert text.startswith("<|im_start|>") and text.endswith("assistant\n")


@pytest.mark.integration
def test_released_target_reloads_its_parameters_and_answers_alike(tiny_lm):
  """A policy round trains between target stages with the target's parameters dropped; the
  next scoring reloads them once, through `reload`, and the NLLs are the same."""
  task, rows = _topics(4)
  loads = []
  target = LocalTarget(tiny_lm, chat=False, batch_size=4,
                       reload=lambda: loads.append(1) or tiny_lm)
  pairs = [(ex, "Pick the topic.") for ex in rows]
  before = evaluation.evaluate_pairs(task, target, pairs)
  assert target.release() and target._lm.params is None  # pylint: disable=protected-access
  assert target.prefix_ids("hi") and not loads  # tokenising needs no parameters
  after = evaluation.evaluate_pairs(task, target, pairs)
  evaluation.evaluate_pairs(task, target, pairs)
  assert len(loads) == 1
  np.testing.assert_allclose([o.option_nll for o in after], [o.option_nll for o in before],
                             rtol=1e-6)
  assert not LocalTarget(tiny_lm, chat=False).release()  # nothing to reload from: kept


def test_target_and_server_hold_their_parameters_on_the_device(tiny_lm):
  """Loaders return host (numpy) parameters; handed to every jitted call they would be copied
  in each time (for SmolLM2 50 ms and a transient second copy per batch), so a target
  without a mesh, its reload and the model server place them once."""
  host = dataclasses.replace(tiny_lm, params=jax.tree.map(np.asarray, tiny_lm.params))
  target = LocalTarget(host, chat=False, reload=lambda: host)
  placed = [target.lm, ModelServer(host, "tiny").lm]
  target.release()
  placed.append(target.lm)
  for lm in placed:
    for a, b in zip(jax.tree.leaves(lm.params), jax.tree.leaves(host.params)):
      assert isinstance(a, jax.Array) and a.dtype == b.dtype
      np.testing.assert_array_equal(a, b)


class _Counting:
  """Wraps a target and counts what reaches it."""

  def __init__(self, inner):
    self.inner, self.identity, self.calls = inner, inner.identity, 0

  def score_options(self, texts, options):
    self.calls += len(texts)
    return self.inner.score_options(texts, options)

  def generate(self, texts, max_new_tokens):
    self.calls += len(texts)
    return self.inner.generate(texts, max_new_tokens)


@pytest.mark.integration
def test_cache_never_calls_twice_and_counts_cost(tiny_lm, tmp_path):
  task, rows = _topics(6)
  path = str(tmp_path / "cache.sqlite")
  target = _Counting(LocalTarget(tiny_lm, chat=False, batch_size=4))
  pairs = [(ex, p) for ex in rows[:4] for p in ("A.", "B.")]
  first = evaluation.evaluate_pairs(task, target, pairs, cache=EvalCache(path), chunk=3)
  assert target.calls == 8
  cache = EvalCache(path)  # reopened from disk
  usage = cache.usage()[target.identity]
  assert usage["calls"] == 8 and usage["prompt_tokens"] > 8 * 10
  more = pairs + [(rows[4], "A.")]
  second = evaluation.evaluate_pairs(task, target, more, cache=cache)
  assert target.calls == 9  # only the new pair went to the target
  assert second[:8] == first
  assert cache.usage()[target.identity]["calls"] == 9


def test_corrupt_cache_is_named_with_the_way_out_when_opened(tmp_path):
  path = str(tmp_path / "eval_cache.sqlite")
  cache = EvalCache(path)
  cache.put_many({f"k{i}": {"nll": [0.5] * 40} for i in range(2000)}, "t", 2000, 10, 0)
  cache.close()
  assert EvalCache(path).usage()["t"]["calls"] == 2000  # intact: opens
  with open(path, "r+b") as f:  # a page in the middle overwritten
    f.seek(os.path.getsize(path) // 2 // 4096 * 4096)
    f.write(np.random.default_rng(0).bytes(4096))
  with pytest.raises(ValueError) as e:
    EvalCache(path)
  msg = str(e.value)
  assert f"evaluation cache {path} is corrupt (" in msg and "\n" not in msg
  assert f"mv {path} {path}.corrupt" in msg
  os.rename(path, path + ".corrupt")  # the way out it names works
  assert EvalCache(path).usage() == {}


def test_unwritable_cache_is_an_os_error_naming_it(tmp_path):
  path = str(tmp_path / "eval_cache.sqlite")
  EvalCache(path).close()
  cache = EvalCache(path)
  cache._db.execute("PRAGMA query_only = 1")  # writes fail as on a read-only file system
  with pytest.raises(OSError) as e:
    cache.put_many({"k": 1}, "t", 1, 1, 1)
  assert e.value.filename == path and "cannot write the evaluation cache" in str(e.value)


@pytest.mark.integration
def test_cache_key_separates_targets_settings_and_demos(tiny_lm):
  task, rows = _topics(8)
  cache = EvalCache(None)
  a = _Counting(LocalTarget(tiny_lm, chat=False, batch_size=4))
  b = _Counting(LocalTarget(tiny_lm, chat=True, batch_size=4))
  pairs = [(rows[0], "A.")]
  evaluation.evaluate_pairs(task, a, pairs, cache=cache)
  evaluation.evaluate_pairs(task, b, pairs, cache=cache)
  sets = base.demo_sets(rows[2:], k=2, n=2, seed=0)
  evaluation.evaluate_pairs(task, a, pairs, setting="few_shot", demo_sets=sets, cache=cache)
  evaluation.evaluate_pairs(task, a, pairs, setting="few_shot", demo_sets=sets[:1], cache=cache)
  assert (a.calls, b.calls) == (1 + 2, 1)


@pytest.mark.integration
def test_few_shot_accuracy_over_demo_sets(tiny_lm):
  task, rows = _topics(12)
  target = LocalTarget(tiny_lm, chat=False, batch_size=4)
  sets = base.demo_sets(rows[4:], k=3, n=2, seed=0)
  out = evaluation.evaluate_pairs(task, target, [(rows[0], "A."), (rows[1], "A.")],
                                  setting="few_shot", demo_sets=sets)
  for ex, o in zip(rows, out):
    per_set = [evaluation.evaluate_pairs(task, target, [(ex, "A.")], setting="few_shot",
                                         demo_sets=[s])[0].accuracy for s in sets]
    assert list(o.per_set) == per_set and o.accuracy == pytest.approx(np.mean(per_set))
  with pytest.raises(ValueError, match="demonstration sets"):
    evaluation.evaluate_pairs(task, target, [(rows[0], "A.")], setting="few_shot")


class _Scripted:
  """A math target that answers from a script (tests extraction and correctness only)."""

  identity = "scripted"

  def __init__(self, replies):
    self.replies = replies

  def generate(self, texts, max_new_tokens):
    return [Generation(self.replies[t.split("\n")[0]], 0.5, 10, 4) for t in texts]


def test_math_outcomes():
  task = get_task("gsm8k")
  exs = [base.Example("a", {"question": "Q1"}, answer=12.0),
         base.Example("b", {"question": "Q2"}, answer=1250.0),
         base.Example("c", {"question": "Q3"}, answer=3.0)]
  target = _Scripted({"Q1": "6 * 2 = 12\nFinal Answer: 12", "Q2": "so $1,250 in total",
                      "Q3": "Final Answer: 4 (not 3)"})
  cache = EvalCache(None)
  out = evaluation.evaluate_pairs(task, target, [(e, "Think.") for e in exs], cache=cache)
  assert [o.correct for o in out] == [1, 1, 0]
  assert [o.answer for o in out] == [12.0, 1250.0, 4.0]
  assert out[0].response_nll == 0.5 and out[0].response.startswith("6 * 2")
  assert cache.usage()["scripted"] == {"calls": 3, "prompt_tokens": 30, "generated_tokens": 12}
  assert evaluation.accuracy(out) == pytest.approx(2 / 3)


@pytest.mark.integration
def test_generate_batched_equals_one_by_one(tiny_lm):
  target = LocalTarget(tiny_lm, chat=True, batch_size=4)
  texts = ["What is 2 + 2?", "Count to three, please, slowly.", "Hi", "A longer question " * 5,
           "Last one?"]
  batched = target.generate(texts, max_new_tokens=6)
  single = [target.generate([t], max_new_tokens=6)[0] for t in texts]
  for b, s, t in zip(batched, single, texts):
    assert b.text == s.text and b.nll == pytest.approx(s.nll, abs=1e-4)
    assert b.prompt_tokens == len(target.prefix_ids(t))
  # the recorded NLL is the mean NLL of the generated tokens under the model
  g = single[0]
  prefix = target.prefix_ids(texts[0])
  out_ids = tiny_lm.tokenizer(g.text, add_special_tokens=False)["input_ids"]
  if out_ids and len(out_ids) == g.generated_tokens:
    assert g.nll == pytest.approx(naive_option_nll(tiny_lm, prefix, out_ids), abs=1e-3)


@pytest.mark.integration
@pytest.mark.parametrize("axes", [{"data": 8}, {"data": 4, "tensor": 2}])
def test_sharded_target_matches_one_device(tiny_lm, axes):
  task, rows = _topics(6)
  pairs = [(ex, "Topic?") for ex in rows]
  ref = evaluation.evaluate_pairs(task, LocalTarget(tiny_lm, chat=False, batch_size=4), pairs)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, **axes})
  target = LocalTarget(tiny_lm, chat=False, batch_size=4, mesh=mesh)
  out = evaluation.evaluate_pairs(task, target, pairs)
  for r, o in zip(ref, out):
    np.testing.assert_allclose(r.option_nll, o.option_nll, atol=1e-4)
  gens = target.generate(["What is 1 + 1?"] * 3, max_new_tokens=4)
  assert len({g.text for g in gens}) == 1
