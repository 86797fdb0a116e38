"""Test-split evaluation of QPO against the spec's baselines; the run's table, JSON and plot.

Methods (each on the same class-balanced test queries and demonstration sets):
  no instruction; manual; every prompt source's mean accuracy; the best source
  prompt chosen on the training data (D_0); a reward model picking the best
  source prompt per query (Prompt-OIRL-style); QPO's greedy per-query prompts
  after each loop. Two references bound what is possible with the source
  prompts: the best single prompt chosen on the test queries themselves, and
  the per-query oracle. The cost of the run is read from cost.json and the
  evaluation cache. Everything goes through the cache, so a rerun only reads.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import ml_collections
import numpy as np

from qpo_jax import evaluation, loop
from qpo_jax.eval_cache import EvalCache, total_usage
from qpo_jax.models.registry import load_model
from qpo_jax.policy import rounds
from qpo_jax.reward_model import RewardModel
from qpo_jax.store import dataset
from qpo_jax.tasks import base as task_base, load_splits
from qpo_jax.utils import atomic_open, atomic_write_text, read_json


def _outcome_accuracy(o: dict[str, Any]) -> float:
  return float(o["acc_q"] if "acc_q" in o else o["correct"])


def _best_train_prompt(recs) -> str:
  by: dict[str, list[float]] = collections.defaultdict(list)
  for r in recs:
    by[r.prompt].append(r.acc_q if not np.isnan(r.acc_q) else r.correct)
  return max(sorted(by), key=lambda p: np.mean(by[p]))


def _cost(workdir: str, cache: EvalCache, num_loops: int) -> dict[str, Any]:
  path = os.path.join(workdir, "cost.json")
  stages = read_json(path, {})
  zero = {"calls": 0, "prompt_tokens": 0, "generated_tokens": 0}
  out, previous = {}, zero
  for name in ["d0"] + [f"collect_{t}" for t in range(1, num_loops + 1)]:
    if name in stages:
      out[name] = {k: stages[name][k] - previous[k] for k in zero}
      previous = stages[name]
  out["total"] = total_usage(cache.usage().values())
  out["evaluation"] = {k: out["total"][k] - previous[k] for k in zero}
  return out


def _evaluate(task, target, cache, queries, prompts, setting, demos, max_new_tokens):
  pairs = [(q, p) for p in prompts for q in queries]
  outs = evaluation.evaluate_pairs(task, target, pairs, setting=setting, demo_sets=demos,
                                   cache=cache, max_new_tokens=max_new_tokens)
  return np.asarray([_outcome_accuracy(o) for o in outs]).reshape(len(prompts), len(queries))


def evaluate_and_report(config: ml_collections.ConfigDict, workdir: str, target,
                        cache: EvalCache) -> dict[str, Any]:
  e, num_loops = config.eval, int(config.loop.num_loops)
  task, splits = load_splits(config.task, ("train", "test"))
  queries = task_base.sample_queries(splits["test"], e.num_queries, seed=config.seed + 7,
                                     max_words=config.task.max_words)
  cands = loop.source_prompts(config, task)
  prompts = list(dict.fromkeys([p for _, p in cands] + ["", task.manual_prompt]))
  d0, _ = dataset.read_dataset(rounds.data_dir(workdir, 0))
  best_train = _best_train_prompt(d0)
  if best_train not in prompts:
    prompts.append(best_train)
  rm = RewardModel(load_model(config.policy), seed=config.seed)
  rm_fit = rm.fit(d0)
  candidate_texts = list(dict.fromkeys(p for _, p in cands))
  rm_choice = rm.choose([q.query for q in queries], candidate_texts)
  qpo_prompts = {}
  for t in range(1, num_loops + 1):
    qpo_prompts[t] = [p[0] for p in rounds.policy_prompts(
        config, workdir, t, [q.query for q in queries], collect=False, seed=config.seed)]
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  table: dict[str, dict[str, float]] = collections.defaultdict(dict)
  calls_per_pair = {}  # target calls for one (query, prompt): the demo sets in few-shot
  for setting in e.settings:
    demos = task_base.demo_sets(splits["train"], e.num_demo_sets, e.num_demos,
                                seed=config.seed + 11, max_words=config.task.max_words) \
        if setting == evaluation.FEW_SHOT else ()
    calls_per_pair[setting] = max(1, len(demos))
    acc = _evaluate(task, target, cache, queries, prompts, setting, demos, e.max_new_tokens)
    row = {p: i for i, p in enumerate(prompts)}
    table["no instruction"][setting] = float(acc[row[""]].mean())
    table["manual"][setting] = float(acc[row[task.manual_prompt]].mean())
    for source in dict.fromkeys(s for s, _ in cands):
      ps = [p for s, p in cands if s == source]
      table[f"source: {source} (mean of {len(ps)})"][setting] = float(
          np.mean([acc[row[p]].mean() for p in ps]))
    table["best source prompt, chosen on train"][setting] = float(acc[row[best_train]].mean())
    cand_rows = [row[p] for p in candidate_texts]
    table["reward model best-of-N (Prompt-OIRL-style)"][setting] = float(np.mean(
        [acc[row[p], i] for i, p in enumerate(rm_choice)]))
    for t, ps in qpo_prompts.items():
      pairs = [(q, p) for q, p in zip(queries, ps)]
      outs = evaluation.evaluate_pairs(task, target, pairs, setting=setting, demo_sets=demos,
                                       cache=cache, max_new_tokens=e.max_new_tokens)
      table[f"QPO loop {t}"][setting] = evaluation.accuracy(outs)
    table["(reference) best source prompt, chosen on test"][setting] = float(
        acc[cand_rows].mean(axis=1).max())
    table["(reference) per-query oracle over source prompts"][setting] = float(
        acc[cand_rows].max(axis=0).mean())
  result = {"task": task.name, "target": target.identity, "policy": config.policy.name,
            "num_test_queries": len(queries), "settings": list(e.settings),
            "best_train_prompt": best_train, "reward_model": rm_fit, "table": dict(table),
            "num_source_prompts": len(candidate_texts), "calls_per_pair": calls_per_pair,
            "qpo_prompts": {str(t): ps for t, ps in qpo_prompts.items()},
            "cost": _cost(workdir, cache, num_loops)}
  markdown = to_markdown(result)
  atomic_write_text(os.path.join(workdir, "eval", "results.json"), json.dumps(result, indent=2))
  atomic_write_text(os.path.join(workdir, "eval", "results.md"), markdown)
  plot(result, workdir)
  print(markdown, flush=True)
  return result


def to_markdown(result: dict[str, Any]) -> str:
  settings = result["settings"]
  lines = [f"# QPO on {result['task']} (target {result['target']}, policy {result['policy']}, "
           f"{result['num_test_queries']} test queries)", "",
           "| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
  for method, accs in result["table"].items():
    lines.append(f"| {method} | " + " | ".join(f"{accs[s]:.3f}" for s in settings) + " |")
  lines += ["", "| cost | target calls | prompt tokens | generated tokens |", "|---|---|---|---|"]
  for stage, u in result["cost"].items():
    lines.append(f"| {stage} | {u['calls']} | {u['prompt_tokens']} | {u['generated_tokens']} |")
  lines += ["", f"Best source prompt on train: {result['best_train_prompt']!r}"]
  return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], workdir: str) -> str:
  """Reward distribution per loop and accuracy per loop against the baselines."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  num_loops = len(result["qpo_prompts"])
  recs, _ = dataset.read_dataset(rounds.data_dir(workdir, num_loops))
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
  by_loop = collections.defaultdict(list)
  for r in recs:
    by_loop[r.loop].append(r.reward)
  edges = np.histogram_bin_edges([r.reward for r in recs], bins=30)
  for t, values in sorted(by_loop.items()):
    left.hist(values, bins=edges, alpha=0.5, label=f"loop {t} ({len(values)})")
  left.set_xlabel("reward")
  left.set_title("reward distribution per loop")
  left.legend(fontsize=7)
  setting = result["settings"][0]
  loops = list(range(1, num_loops + 1))
  right.plot(loops, [result["table"][f"QPO loop {t}"][setting] for t in loops], "o-", label="QPO")
  for name in ("best source prompt, chosen on train",
               "reward model best-of-N (Prompt-OIRL-style)", "manual", "no instruction"):
    right.axhline(result["table"][name][setting], ls="--", lw=1, label=name, color=None)
  right.set_xlabel("loop")
  right.set_ylabel(f"test accuracy ({setting})")
  right.set_xticks(loops)
  right.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(workdir, "eval", "results.png")
  with atomic_open(path, "wb") as fh:
    fig.savefig(fh, format="png", dpi=100)
  plt.close(fig)
  return path
