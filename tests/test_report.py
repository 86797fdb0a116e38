"""The report's statistics: paired bootstrap, prompt statistics, method ids, the results file."""

import json
import os

import numpy as np
import pytest

from qpo_jax import report
from qpo_jax.store.records import Record


def test_paired_bootstrap_interval():
  same = report.paired_bootstrap([1, 0, 1, 0], [1, 0, 1, 0], seed=0)
  assert same["mean"] == same["low"] == same["high"] == 0.0
  better = report.paired_bootstrap([1] * 50, [0] * 50, seed=0)
  assert better["mean"] == better["low"] == better["high"] == 1.0
  rng = np.random.default_rng(0)
  a = (rng.random(400) < 0.6).astype(float)  # 0.6 vs 0.4 accurate, independent errors
  b = (rng.random(400) < 0.4).astype(float)
  got = report.paired_bootstrap(a, b, seed=1)
  assert got["low"] < got["mean"] < got["high"] and got["low"] > 0
  assert got["mean"] == pytest.approx(a.mean() - b.mean())
  d = a - b  # the interval is about +-1.96 standard errors of the mean difference
  assert got["high"] - got["low"] == pytest.approx(2 * 1.96 * d.std() / np.sqrt(len(d)), rel=0.1)
  # the same pairs in another order give the same interval (resampling is over queries)
  perm = rng.permutation(400)
  again = report.paired_bootstrap(a[perm], b[perm], seed=1)
  assert again["mean"] == pytest.approx(got["mean"]) and abs(again["low"] - got["low"]) < 0.02


def test_prompt_stats_and_best_train_prompt():
  stats = report.prompt_stats(["a", "a", "b", "new"], {"a", "b", "c"}, best_train="a")
  assert stats == {"distinct": 3, "not_a_source_prompt": 0.25, "best_train_prompt": 0.5}
  recs = [Record(task="t", query=f"q{i}", prompt=p, reward=0.0, correct=c)
          for i, (p, c) in enumerate([("x", 1), ("x", 0), ("y", 1), ("y", 1), ("z", 0)])]
  assert report.best_train_prompt(recs) == "y"


def test_labels_come_from_ids():
  assert report.label("qpo_loop_3") == "QPO loop 3"
  assert report.label("source_ape", {"ape": 5}) == "source: ape (mean of 5)"
  assert report.label("source_ape") == "source: ape"
  assert report.label("best_train_prompt") == "best source prompt, chosen on train"


def test_the_cost_table_counts_each_stage_and_an_evaluation_beside_copied_stages():
  """Stages store the cache's cumulative counts; each row is the difference. A D_0 copied in
  from another workdir counted in that workdir's cache: the evaluation then counts from
  the cache's own count when it began, and the total is the rows' sum."""
  def usage(calls):
    return {"usage": {"calls": calls, "prompt_tokens": 10 * calls, "generated_tokens": 0},
            "seconds": 60.0, "peak_memory_gb": 1.5}

  run = report.cost_table({"d0": usage(100), "round_1": {"seconds": 30.0, "peak_memory_gb": 2.0},
                           "collect_1": usage(160)},
                          now={"calls": 200, "prompt_tokens": 2000, "generated_tokens": 0},
                          at_start={"calls": 170, "prompt_tokens": 1700, "generated_tokens": 0},
                          seconds=12.0)
  assert {k: v["calls"] for k, v in run.items()} == {
      "d0": 100, "round_1": 0, "collect_1": 60, "evaluation": 40, "total": 200}
  assert run["total"]["prompt_tokens"] == 2000 and run["total"]["seconds"] == 162.0
  assert run["total"]["peak_memory_gb"] >= 2.0
  copied = report.cost_table({"d0": usage(9200)},
                             now={"calls": 4801, "prompt_tokens": 48010, "generated_tokens": 0},
                             at_start={"calls": 0, "prompt_tokens": 0, "generated_tokens": 0},
                             seconds=300.0)
  assert copied["evaluation"]["calls"] == 4801 and copied["total"]["calls"] == 9200 + 4801


def test_the_table_marks_a_method_measured_in_one_setting_only():
  """The label-forcing references are measured zero-shot only: in a run of both settings
  their few-shot cell is '-', not a KeyError."""
  result = {"task": "t", "target": "x", "policy": "p", "num_test_queries": 2, "split": "test",
            "settings": ["zero_shot", "few_shot"], "source_sizes": {},
            "methods": {"qpo_loop_1": {"zero_shot": 0.5, "few_shot": 0.25},
                        "label_oracle": {"zero_shot": 1.0}},
            "qpo_prompts": {"1": ["a", "b"]},
            "qpo_prompt_stats": {"1": {"distinct": 2, "not_a_source_prompt": 0.0,
                                       "best_train_prompt": 0.5}},
            "cost": {}, "best_train_prompt": "a"}
  md = report.to_markdown(result)
  assert "| QPO loop 1 | 0.500 | 0.250 |" in md
  assert f"| {report.label('label_oracle')} | 1.000 | - |" in md


@pytest.mark.integration  # the whole tiny run (session fixture)
def test_results_file_says_whether_qpo_is_query_dependent(tiny_run):
  work, result = tiny_run
  saved = json.load(open(os.path.join(work, "eval", "results.json")))
  assert saved["methods"] == result["methods"]
  ids = set(saved["methods"])
  assert {"none", "manual", "best_train_prompt", "reward_model", "qpo_loop_1", "qpo_loop_2",
          "best_test_prompt", "oracle"} <= ids
  assert {f"source_{s}" for s in saved["source_sizes"]} <= ids
  for name in ("qpo_vs_best_train", "qpo_vs_reward_model"):
    c = saved[name]["zero_shot"]
    assert c["low"] <= c["mean"] <= c["high"]
  q = saved["queries"]
  assert len(q) == saved["num_test_queries"]
  best = saved["methods"]["best_train_prompt"]["zero_shot"]
  assert np.mean([x["correct"]["zero_shot"]["best_train_prompt"] for x in q]) == \
      pytest.approx(best)
  last = saved["methods"]["qpo_loop_2"]["zero_shot"]
  assert np.mean([x["correct"]["zero_shot"]["qpo_loop_2"] for x in q]) == pytest.approx(last)
  assert saved["qpo_vs_best_train"]["zero_shot"]["mean"] == pytest.approx(last - best)
  for t in ("1", "2"):
    prompts = [x["qpo"][t] for x in q]
    assert prompts == saved["qpo_prompts"][t]
    assert saved["qpo_prompt_stats"][t]["distinct"] == len(set(prompts))
  assert all(x["uid"] and x["gold"] in ("Sports", "Food", "Weather", "Technology") for x in q)
  md = open(os.path.join(work, "eval", "results.md")).read()
  assert "| QPO - best source prompt, chosen on train |" in md and "| loop 2 |" in md


@pytest.mark.integration  # the whole tiny run (session fixture)
def test_results_file_tells_routing_from_writing(tiny_run):
  """The selectors QPO is measured against, the purity table and the new-text share are in
  the results, consistent with the per-query prompts they summarise."""
  from qpo_jax import diagnostics
  work, _ = tiny_run
  saved = json.load(open(os.path.join(work, "eval", "results.json")))
  methods = saved["methods"]
  assert {"classifier_lookup", "reward_model_finetuned", "classifier_lookup_finetuned",
          "oracle_impure"} <= set(methods)
  assert methods["oracle_impure"]["zero_shot"] <= methods["oracle"]["zero_shot"]
  for name in ("reward_model", "classifier_lookup", "reward_model_finetuned",
               "classifier_lookup_finetuned"):
    assert saved["baselines"][name]["capacity"]["trained_parameters"] > 0
    c = saved[f"qpo_vs_{name}"]["zero_shot"]
    assert c["low"] <= c["mean"] <= c["high"]
  # the fine-tuned selectors train the backbone QPO trains (less its untied LM head)
  tuned = saved["baselines"]["reward_model_finetuned"]["capacity"]["trained_parameters"]
  assert tuned > saved["baselines"]["reward_model"]["capacity"]["trained_parameters"]
  assert tuned >= saved["policy_trained_parameters"] / 2
  sources = [row["prompt"] for row in saved["source_prompts"]]
  assert len(sources) == saved["num_source_prompts"]
  purity = {row["prompt"]: row["purity"] for row in saved["source_prompts"]}
  assert all(0 < v <= 1 for v in purity.values())
  for t, prompts in saved["qpo_prompts"].items():
    w = saved["writing"][f"qpo_loop_{t}"]
    assert w["new_fraction"] == pytest.approx(
        np.mean([diagnostics.is_new_text(p, sources) for p in prompts]))
    r = saved["routing"][f"qpo_loop_{t}"]
    pure = [purity[p] >= saved["pure_threshold"] for p in prompts if p in purity]
    if r["measured"] == 1.0 and len(pure) == len(prompts):
      assert r["pure_fraction"] == pytest.approx(np.mean(pure))
  # the label router each selector amounts to: how often its prompt's majority label is the
  # gold one, from the saved purity table and per-query prompts
  majority = {row["prompt"]: row["majority"] for row in saved["source_prompts"]}
  for name in ("reward_model", "classifier_lookup"):
    said = [majority[q[f"{name}_prompt"]] == q["gold"] for q in saved["queries"]]
    assert saved["routing"][name]["majority_is_gold"] == pytest.approx(np.mean(said))
    assert 0 <= saved["routing"][name]["as_label_router"] <= methods["oracle"]["zero_shot"]
  # one source prompt per query: never above the per-query oracle over them
  assert 0 < methods["label_oracle"]["zero_shot"] <= methods["oracle"]["zero_shot"]
  v = saved["validation"]
  assert v["num_queries"] > 0 and {"best_train_prompt", "qpo_loop_1", "qpo_loop_2"} <= set(
      v["methods"])
  test_uids = {q["uid"] for q in saved["queries"]}
  assert saved["split"] == "test" and test_uids  # validation queries are another split
  md = open(os.path.join(work, "eval", "results.md")).read()
  assert "classifier, then the class's best D_0 prompt" in md and "purity" in md
  assert "| (reference) label router given the gold label" in md


@pytest.mark.integration  # the whole tiny run (session fixture)
def test_results_say_whether_the_return_steers_the_policy(tiny_run):
  work, _ = tiny_run
  saved = json.load(open(os.path.join(work, "eval", "results.json")))
  r = saved["return_sensitivity"]
  assert r["target_return"] == 100.0 and set(r["by_return"]) == {"0.0", "50.0"}
  last = saved["qpo_prompts"][str(max(map(int, saved["qpo_prompts"])))]
  for b in r["by_return"].values():
    assert len(b["prompts"]) == len(last)
    assert b["same_prompt"] == pytest.approx(np.mean([p == q for p, q in zip(b["prompts"], last)]))
    assert 0 <= b["accuracy"] <= 1
  assert "Does the return steer the last policy?" in open(
      os.path.join(work, "eval", "results.md")).read()


@pytest.mark.integration  # the whole tiny run (session fixture)
def test_only_the_writer_process_draws_and_logs_the_report(tiny_run, tmp_path, monkeypatch):
  """In a multi-process run the other processes write no picture and no TensorBoard events:
  theirs were a second event file of the same scalars, and a race to create eval/tb."""
  from qpo_jax import distributed, report_plot
  from tests.helpers import scalars

  _, result = tiny_run
  monkeypatch.setattr(distributed, "is_writer", lambda: False)
  report_plot.tensorboard(result, str(tmp_path))
  report_plot.plot(result, str(tmp_path), report.label)
  assert not os.path.exists(tmp_path / "eval")
  monkeypatch.setattr(distributed, "is_writer", lambda: True)
  tb = report_plot.tensorboard(result, str(tmp_path))
  assert scalars(tb)["eval/zero_shot/qpo"] == [
      (t, pytest.approx(result["methods"][f"qpo_loop_{t}"]["zero_shot"])) for t in (1, 2)]
