"""Test-split evaluation of QPO against the spec's baselines; the run's table, JSON and plot.

Methods (each on the same class-balanced test queries and demonstration sets),
keyed in results.json by stable ids (display labels live in the Markdown only):
  none, manual        no instruction; the task's manual prompt
  source_<name>       a prompt source's mean accuracy over its prompts
  best_train_prompt   the source prompt with the best accuracy on D_0 (all of
                      it, before expert filtering)
  reward_model        a reward model picks a source prompt per query (Prompt-OIRL-style)
  qpo_loop_<t>        QPO's greedy per-query prompts after loop t
  best_test_prompt    (reference) the best single prompt chosen on the test queries
  oracle              (reference) per query, any source prompt that is right
Whether QPO really wins is a paired question (the same queries): the report
gives the mean difference of QPO's last loop to the best train prompt and to
the reward model with a paired bootstrap 95% interval, and per loop how many
distinct prompts QPO wrote, how many are not verbatim a source prompt and how
many equal the best train prompt. Every test query is listed with its gold
answer and QPO's prompt per loop, so another implementation can re-score them.
The cost of the run is read from each stage's artifact (loop.py) and the evaluation cache.
Everything goes through the cache, so a rerun only reads.
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from qpo_jax import evaluation
from qpo_jax import prompts as prompts_lib
from qpo_jax.eval_cache import EvalCache, total_usage
from qpo_jax.models.registry import load_model
from qpo_jax.policy import rounds
from qpo_jax.oirl_baseline import RewardModel
from qpo_jax.store import dataset
from qpo_jax.tasks import CHOICE, base as task_base, load_splits
from qpo_jax.tasks.base import format_number
from qpo_jax.utils import atomic_open, atomic_write_text, peak_memory_gb, read_json
from qpo_jax.targets import Target
from qpo_jax.workdir import Workdir

LABELS = {
    "none": "no instruction",
    "manual": "manual",
    "best_train_prompt": "best source prompt, chosen on train",
    "reward_model": "reward model best-of-N (Prompt-OIRL-style)",
    "best_test_prompt": "(reference) best source prompt, chosen on test",
    "oracle": "(reference) per-query oracle over source prompts",
}
BOOTSTRAP_RESAMPLES = 10_000


def qpo_id(t: int) -> str:
  return f"qpo_loop_{t}"


def source_id(source: str) -> str:
  return f"source_{source}"


def label(method: str, source_sizes: dict[str, int] | None = None) -> str:
  """The display label of a method id (with a source's prompt count when sizes are given)."""
  if method.startswith("qpo_loop_"):
    return f"QPO loop {method.rsplit('_', 1)[1]}"
  if method.startswith("source_"):
    source = method[len("source_"):]
    return f"source: {source}" + (f" (mean of {source_sizes[source]})" if source_sizes else "")
  return LABELS[method]


def best_train_prompt(recs) -> str:
  """The prompt with the highest mean accuracy over the records (ties: the first in order)."""
  by: dict[str, list[float]] = collections.defaultdict(list)
  for r in recs:
    by[r.prompt].append(r.accuracy)
  return max(sorted(by), key=lambda p: np.mean(by[p]))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], seed: int,
                     resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, float]:
  """Mean of a - b over the same queries and its percentile bootstrap 95% interval."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  rng = np.random.default_rng(seed)
  means = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
  low, high = np.percentile(means, [2.5, 97.5])
  return {"mean": float(d.mean()), "low": float(low), "high": float(high),
          "resamples": resamples}


def prompt_stats(prompts: Sequence[str], sources: set[str], best_train: str) -> dict[str, Any]:
  """How query-dependent a list of per-query prompts is."""
  n = max(len(prompts), 1)
  return {"distinct": len(set(prompts)),
          "not_a_source_prompt": sum(p not in sources for p in prompts) / n,
          "best_train_prompt": sum(p == best_train for p in prompts) / n}


def stage_costs(workdir: str, num_loops: int) -> dict[str, dict[str, Any]]:
  """The `cost` each finished stage wrote with its artifact (a dataset manifest's `meta`, a
  round's `final` marker)."""
  found = {"d0": read_json(os.path.join(Workdir(workdir).data(0), dataset.MANIFEST), {})}
  for t in range(1, num_loops + 1):
    found[f"train_{t}"] = read_json(Workdir(workdir).final(t), {})
    found[f"collect_{t}"] = read_json(os.path.join(Workdir(workdir).data(t), dataset.MANIFEST),
                                      {})
  found.update({k: m.get("meta", {}) for k, m in found.items() if not k.startswith("train_")})
  return {name: meta["cost"] for name, meta in found.items() if "cost" in meta}


def _cost(workdir: str, cache: EvalCache, num_loops: int, started: float) -> dict[str, Any]:
  """Per stage: target usage (differences of the cumulative counts), wall time, peak memory.

  Training calls no target. A cache deleted to recover from corruption restarts its
  counts, so a difference is never taken below 0.
  """
  zero = {"calls": 0, "prompt_tokens": 0, "generated_tokens": 0}
  out, previous = {}, zero
  for name, cost in stage_costs(workdir, num_loops).items():
    usage = cost.get("usage")
    out[name] = {**({k: max(0, usage[k] - previous[k]) for k in zero} if usage else zero),
                 "seconds": cost["seconds"], "peak_memory_gb": cost["peak_memory_gb"]}
    previous = {k: usage[k] for k in zero} if usage else previous
  total = total_usage(cache.usage().values())
  out["evaluation"] = {**{k: max(0, total[k] - previous[k]) for k in zero},
                       "seconds": round(time.time() - started, 1),
                       "peak_memory_gb": peak_memory_gb()}
  out["total"] = {**total, "seconds": round(sum(v.get("seconds", 0) for v in out.values()), 1),
                  "peak_memory_gb": max(v.get("peak_memory_gb", 0) for v in out.values())}
  return out


def _accuracies(task, target: Target, cache, pairs, setting, demos, max_new_tokens) -> np.ndarray:
  outs = evaluation.evaluate_pairs(task, target, pairs, setting=setting, demo_sets=demos,
                                   cache=cache, max_new_tokens=max_new_tokens)
  return np.asarray([o.accuracy for o in outs])


def _gold(task, ex) -> str:
  return task.options(ex)[ex.label] if task.kind == CHOICE else format_number(ex.answer)


def evaluate_and_report(config: ml_collections.ConfigDict, workdir: str, target: Target,
                        cache: EvalCache) -> dict[str, Any]:
  started = time.time()
  e, num_loops = config.eval, int(config.loop.num_loops)
  task, splits = load_splits(config.task, ("train", "test"))
  queries = task_base.sample_queries(splits["test"], e.num_queries, seed=config.seed + 7,
                                     max_words=config.task.max_words)
  cands = prompts_lib.source_prompts(config, task)
  candidate_texts = list(dict.fromkeys(p for _, p in cands))
  d0, _ = dataset.read_dataset(Workdir(workdir).data(0))
  best_train = best_train_prompt(d0)
  prompts = list(dict.fromkeys(candidate_texts + ["", task.manual_prompt, best_train]))
  rm = RewardModel(load_model(config.policy), seed=config.seed)
  rm_fit = rm.fit(d0)
  rm_choice = rm.choose([q.query for q in queries], candidate_texts)
  qpo_prompts = {t: [p[0] for p in rounds.policy_prompts(
      config, workdir, t, [q.query for q in queries], collect=False, seed=config.seed)]
      for t in range(1, num_loops + 1)}
  sources = list(dict.fromkeys(s for s, _ in cands))
  methods: dict[str, dict[str, float]] = collections.defaultdict(dict)
  comparisons: dict[str, dict[str, Any]] = collections.defaultdict(dict)
  calls_per_pair = {}  # target calls for one (query, prompt): the demo sets in few-shot
  per_query: dict[str, dict[str, list[float]]] = {}
  for setting in e.settings:
    demos = task_base.demo_sets(splits["train"], e.num_demo_sets, e.num_demos,
                                seed=config.seed + 11, max_words=config.task.max_words) \
        if setting == evaluation.FEW_SHOT else ()
    calls_per_pair[setting] = max(1, len(demos))
    acc = _accuracies(task, target, cache, [(q, p) for p in prompts for q in queries], setting,
                      demos, e.max_new_tokens).reshape(len(prompts), len(queries))
    row = {p: i for i, p in enumerate(prompts)}
    cand_rows = [row[p] for p in candidate_texts]
    vectors = {"none": acc[row[""]], "manual": acc[row[task.manual_prompt]]}
    for source in sources:
      vectors[source_id(source)] = acc[[row[p] for s, p in cands if s == source]].mean(axis=0)
    vectors["best_train_prompt"] = acc[row[best_train]]
    vectors["reward_model"] = np.asarray([acc[row[p], i] for i, p in enumerate(rm_choice)])
    for t, ps in qpo_prompts.items():
      vectors[qpo_id(t)] = _accuracies(task, target, cache, list(zip(queries, ps)), setting,
                                       demos, e.max_new_tokens)
    vectors["best_test_prompt"] = acc[cand_rows[int(acc[cand_rows].mean(axis=1).argmax())]]
    vectors["oracle"] = acc[cand_rows].max(axis=0)
    for method, v in vectors.items():
      methods[method][setting] = float(v.mean())
    last = vectors[qpo_id(num_loops)]
    for name, baseline in (("qpo_vs_best_train", "best_train_prompt"),
                           ("qpo_vs_reward_model", "reward_model")):
      comparisons[name][setting] = paired_bootstrap(last, vectors[baseline], seed=config.seed)
    per_query[setting] = {m: [float(x) for x in v] for m, v in vectors.items()
                          if m in ("best_train_prompt", "reward_model") or m.startswith("qpo_")}
  result = {
      "task": task.name, "target": target.identity, "policy": config.policy.name,
      "num_test_queries": len(queries), "settings": list(e.settings),
      "best_train_prompt": best_train, "reward_model": rm_fit, "methods": dict(methods),
      **comparisons,
      "qpo_prompt_stats": {str(t): prompt_stats(ps, set(candidate_texts), best_train)
                           for t, ps in qpo_prompts.items()},
      "num_source_prompts": len(candidate_texts),
      "source_sizes": {s: sum(src == s for src, _ in cands) for s in sources},
      "calls_per_pair": calls_per_pair,
      "qpo_prompts": {str(t): ps for t, ps in qpo_prompts.items()},
      "queries": [{"uid": q.uid, "text": q.query, "gold": _gold(task, q),
                   "reward_model_prompt": rm_choice[i],
                   "qpo": {str(t): ps[i] for t, ps in qpo_prompts.items()},
                   "correct": {s: {m: v[i] for m, v in per_query[s].items()}
                               for s in e.settings}}
                  for i, q in enumerate(queries)],
      "cost": _cost(workdir, cache, num_loops, started)}
  markdown = to_markdown(result)
  atomic_write_text(Workdir(workdir).eval("results.json"), json.dumps(result, indent=2))
  atomic_write_text(Workdir(workdir).eval("results.md"), markdown)
  plot(result, workdir)
  print(markdown, flush=True)
  return result


def _interval(c: dict[str, float]) -> str:
  return f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"


def to_markdown(result: dict[str, Any]) -> str:
  settings = result["settings"]
  last = max(int(t) for t in result["qpo_prompts"])
  lines = [f"# QPO on {result['task']} (target {result['target']}, policy {result['policy']}, "
           f"{result['num_test_queries']} test queries)", "",
           "| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
  for method, accs in result["methods"].items():
    lines.append(f"| {label(method, result['source_sizes'])} | "
                 + " | ".join(f"{accs[s]:.3f}" for s in settings) + " |")
  lines += ["", f"QPO loop {last} minus a baseline, same queries (paired bootstrap 95% interval, "
            f"{BOOTSTRAP_RESAMPLES} resamples):", "",
            "| comparison | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
  for name, what in (("qpo_vs_best_train", "best source prompt, chosen on train"),
                     ("qpo_vs_reward_model", "reward model best-of-N")):
    lines.append(f"| QPO - {what} | " + " | ".join(_interval(result[name][s])
                                                   for s in settings) + " |")
  lines += ["", "| QPO prompts | distinct | not a source prompt | = best train prompt |",
            "|---|---|---|---|"]
  for t, st in result["qpo_prompt_stats"].items():
    lines.append(f"| loop {t} | {st['distinct']} | {st['not_a_source_prompt']:.2f} | "
                 f"{st['best_train_prompt']:.2f} |")
  lines += ["", "| stage | target calls | prompt tokens | generated tokens | wall time | "
            "peak memory |", "|---|---|---|---|---|---|"]
  for stage, u in result["cost"].items():
    wall = f"{u['seconds'] / 60:.1f} min" if "seconds" in u else "-"
    memory = f"{u['peak_memory_gb']:.1f} GB" if "peak_memory_gb" in u else "-"
    lines.append(f"| {stage} | {u['calls']} | {u['prompt_tokens']} | {u['generated_tokens']} | "
                 f"{wall} | {memory} |")
  lines += ["", f"Best source prompt on train: {result['best_train_prompt']!r}"]
  return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], workdir: str) -> str:
  """Reward distribution per loop and accuracy per loop against the baselines."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  num_loops = len(result["qpo_prompts"])
  # the newest dataset (D_T, or D_{T-1} without a final collection); datasets are renamed
  # into place whole, as inspect_data relies on too
  wd = Workdir(workdir)
  recs, _ = dataset.read_dataset(wd.data(wd.datasets()[-1]))
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
  right.plot(loops, [result["methods"][qpo_id(t)][setting] for t in loops], "o-", color="black",
             lw=2, label="QPO")
  baselines = ("best_train_prompt", "reward_model", "manual", "none", "best_test_prompt",
               "oracle")
  for method, color in zip(baselines, plt.get_cmap("tab10").colors):
    right.axhline(result["methods"][method][setting], ls=":" if method in ("best_test_prompt",
                                                                           "oracle") else "--",
                  lw=1.5, color=color, label=label(method))
  right.set_xlabel("loop")
  right.set_ylabel(f"test accuracy ({setting})")
  right.set_xticks(loops)
  right.legend(fontsize=7)
  fig.tight_layout()
  path = Workdir(workdir).eval("results.png")
  with atomic_open(path, "wb") as fh:
    fig.savefig(fh, format="png", dpi=100)
  plt.close(fig)
  return path
