"""The final evaluation of QPO against the spec's baselines; the run's table, JSON and plot.

Methods (each on the same class-balanced queries of `eval.split`, the test split
unless settings are being chosen, and the same demonstration sets), keyed in
results.json by stable ids (display labels live in the Markdown only):
  none, manual        no instruction; the task's manual prompt
  source_<name>       a prompt source's mean accuracy over its prompts
  best_train_prompt   the source prompt with the best accuracy on D_0 (all of
                      it, before expert filtering)
  reward_model        a reward model picks a source prompt per query (Prompt-OIRL-style)
  classifier_lookup   a classifier predicts the query's label, the class's best D_0
                      prompt is used (choice tasks; baselines.py)
  qpo_loop_<t>        QPO's greedy per-query prompts after loop t
  best_test_prompt    (reference) the best single prompt chosen on the test queries
  oracle              (reference) per query, any source prompt that is right
  oracle_impure       (reference) the same without label-forcing prompts
  label_oracle        (reference) each query given its gold label's best D_0 prompt:
                      a label router with a perfect classifier (choice tasks)
Whether QPO really wins is a paired question (the same queries): the report
gives the mean difference of QPO's last loop to each baseline that picks per
query or overall, with a paired bootstrap 95% interval. Whether it wins by
writing or by routing (diagnostics.py): every source prompt's label purity, and
for every per-query method the share of label-forcing prompts, how often the
target follows them, how often a prompt's majority label is the gold one and
what routing by those labels alone would score; for QPO the share of new texts,
how they did against the source prompts on the same queries, and the most used
ones. Each baseline's capacity stands beside the policy's trained parameters.
QPO's prompts of every loop are also scored on validation queries
(`eval.validation_queries`), which no stage trains on or collects. Every query is
listed with its gold answer and each method's prompt, and the source prompts with
their texts, so another implementation can re-score them. The cost of the run is
read from each stage's artifact (loop.py) and the evaluation cache. Everything goes
through the cache, so a rerun only reads.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from qpo_jax import diagnostics, evaluation, report_plot, rewards, rounds, stages
from qpo_jax.baselines import ClassifierLookup, RewardModel, TextEmbedder, class_best_prompts
from qpo_jax.context import Run
from qpo_jax.finetuned_baselines import FinetunedSelectors
from qpo_jax.eval_cache import total_usage
from qpo_jax.policy import train_step
from qpo_jax.policy.settings import TrainSettings
from qpo_jax.store import dataset
from qpo_jax.tasks import CHOICE, base as task_base
from qpo_jax.tasks.base import format_number
from qpo_jax.utils import atomic_write_text, peak_memory_gb
from qpo_jax.targets import Target
from qpo_jax.workdir import Workdir

BEST_OF_N = "qpo_best_of_n"  # the critic's pick among the last policy's prompts (eval.best_of_n)
LABELS = {
    "none": "no instruction",
    "manual": "manual",
    "best_train_prompt": "best source prompt, chosen on train",
    "reward_model": "reward model best-of-N (Prompt-OIRL-style)",
    "classifier_lookup": "classifier, then the class's best D_0 prompt",
    "reward_model_finetuned": "reward model best-of-N, fine-tuned encoder",
    "classifier_lookup_finetuned": "classifier then lookup, fine-tuned encoder",
    "best_test_prompt": "(reference) best source prompt, chosen on test",
    "oracle": "(reference) per-query oracle over source prompts",
    "oracle_impure": "(reference) per-query oracle without label-forcing prompts",
    "label_oracle": "(reference) label router given the gold label (its class's best D_0 prompt)",
    BEST_OF_N: "QPO last loop, best of N by the critic",
}
BOOTSTRAP_RESAMPLES = 10_000
# QPO's last loop against each of these, paired (results.json key -> baseline)
SELECTORS = ("reward_model", "classifier_lookup", "reward_model_finetuned",
             "classifier_lookup_finetuned")  # per-query baselines (baselines.py and finetuned_)
COMPARISONS = {"qpo_vs_best_train": "best_train_prompt",
               **{f"qpo_vs_{name}": name for name in SELECTORS}}
PER_QUERY = ("best_train_prompt",) + SELECTORS  # listed per query


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
  """The `cost` each finished stage wrote with its artifact, by stage name (stages.py)."""
  wd = Workdir(workdir)
  found = {s.name: s.cost(wd) for s in stages.of_run(num_loops)}
  return {name: cost for name, cost in found.items() if cost}


def cost_table(stages_cost: Mapping[str, Mapping[str, Any]], now: Mapping[str, int],
               at_start: Mapping[str, int], seconds: float) -> dict[str, Any]:
  """Per stage: target usage (differences of the cumulative counts), wall time, peak memory;
  then the evaluation (`seconds` long, the cache at `at_start` when it began and at `now`)
  and the total.

  Training calls no target. A cache deleted to recover from corruption restarts its
  counts, so a difference is never taken below 0. The evaluation counts from the last
  stage's count, or from the cache's count when it began where that is lower: a stage
  copied in from another workdir counted in that workdir's cache.
  """
  zero = {"calls": 0, "prompt_tokens": 0, "generated_tokens": 0}
  out, previous = {}, zero
  for name, cost in stages_cost.items():
    usage = cost.get("usage")
    out[name] = {**({k: max(0, usage[k] - previous[k]) for k in zero} if usage else zero),
                 "seconds": cost["seconds"], "peak_memory_gb": cost["peak_memory_gb"]}
    previous = {k: usage[k] for k in zero} if usage else previous
  out["evaluation"] = {**{k: max(0, now[k] - min(previous[k], at_start[k])) for k in zero},
                       "seconds": round(seconds, 1), "peak_memory_gb": peak_memory_gb()}
  out["total"] = {**{k: sum(v[k] for v in out.values()) for k in zero},
                  "seconds": round(sum(v.get("seconds", 0) for v in out.values()), 1),
                  "peak_memory_gb": max(v.get("peak_memory_gb", 0) for v in out.values())}
  return out


def _outcomes(task, target: Target, cache, pairs, setting, demos, max_new_tokens) -> list:
  return evaluation.evaluate_pairs(task, target, pairs, setting=setting, demo_sets=demos,
                                   cache=cache, max_new_tokens=max_new_tokens)


def _correct(outcomes) -> np.ndarray:
  return np.asarray([o.accuracy for o in outcomes])


def _gold(task, ex) -> str:
  return task.options(ex)[ex.label] if task.kind == CHOICE else format_number(ex.answer)


def _gold_choice_nll(outcomes) -> np.ndarray:
  return np.asarray([rewards.choice_nll(o.option_nll, o.gold_nll) for o in outcomes])


def _purity_probe(task, target, cache, d0, train: Sequence, prompts: Sequence[str], n: int,
                  seed: int, max_words: int) -> dict[str, diagnostics.Purity]:
  """Purity of each prompt: over every D_0 query it has a zero-shot record for (a source
  prompt), else over `n` class-balanced D_0 queries, scored through the cache."""
  measured = [(r.prompt, r.pred) for r in d0 if r.setting == evaluation.ZERO_SHOT and r.pred >= 0]
  purity = diagnostics.label_purity(*zip(*measured)) if measured else {}
  todo = [p for p in dict.fromkeys(prompts) if p not in purity]
  if todo and n:
    in_d0 = {r.query_id or r.query for r in d0}
    probe = task_base.sample_queries([ex for ex in train if ex.uid in in_d0 or ex.query in in_d0],
                                     n, seed=seed, max_words=max_words)
    outs = _outcomes(task, target, cache, [(q, p) for p in todo for q in probe],
                     evaluation.ZERO_SHOT, (), 0)
    purity.update(diagnostics.label_purity([p for p in todo for _ in probe],
                                           [o.pred for o in outs]))
  return purity


def report_queries(config: ml_collections.ConfigDict, rows: list[task_base.Example]
                   ) -> list[task_base.Example]:
  """The queries the report scores every method on: eval.num_queries of `rows` (the
  eval.split), seeded; experiments that compare with the report read the same ones."""
  return task_base.sample_queries(rows, config.eval.num_queries, seed=config.seed + 7,
                                  max_words=config.task.max_words)


def evaluate_and_report(run: Run) -> dict[str, Any]:
  started = time.time()
  config, workdir, wd = run.config, run.workdir, run.wd
  target, cache = run.target, run.cache
  at_start = total_usage(cache.usage().values())
  e, num_loops = config.eval, int(config.loop.num_loops)
  task, splits = run.task, run.splits
  queries = report_queries(config, splits[e.split])
  texts = [q.query for q in queries]
  cands = run.source_prompts
  candidate_texts = list(dict.fromkeys(p for _, p in cands))
  d0, _ = dataset.read_dataset(wd.data(0))
  best_train = best_train_prompt(d0)
  prompts = list(dict.fromkeys(candidate_texts + ["", task.manual_prompt, best_train]))
  lm = run.take_frozen_lm()  # the frozen encoder (fine-tuned below)
  embed = TextEmbedder(lm)
  rm = RewardModel(embed, seed=config.seed)
  fits = {"reward_model": {**rm.fit(d0), "capacity": rm.capacity()}}
  chosen = {"reward_model": rm.choose(texts, candidate_texts)}
  routed = task.kind == CHOICE  # classes to route to
  if routed:
    lookup = ClassifierLookup(embed, seed=config.seed)
    fits["classifier_lookup"] = {**lookup.fit(d0), "capacity": lookup.capacity()}
    chosen["classifier_lookup"] = lookup.choose(texts)
    del lookup
  validation = task_base.sample_queries(splits["validation"], e.validation_queries,
                                        seed=config.seed + 17, max_words=config.task.max_words) \
      if e.split != "validation" else []
  greedy, validation_prompts = {}, {}
  # one policy in memory at a time; the round the run holds (the last trained) goes first
  for t in sorted(range(1, num_loops + 1), key=lambda t: (t != run.held_round, t)):
    sampler = rounds.prompt_sampler(run, t)
    both = [p[0] for p in sampler(texts + [q.query for q in validation], collect=False,
                                  seed=config.seed)]
    greedy[t], validation_prompts[t] = both[:len(texts)], both[len(texts):]
    if t == num_loops:
      last = _last_policy(run, sampler, embed, texts, greedy[t])
    del sampler
  run.drop_round()  # no policy beside the fine-tuned selectors' training below
  qpo_prompts = {qpo_id(t): greedy[t] for t in range(1, num_loops + 1)}
  validation_prompts = {t: validation_prompts[t] for t in range(1, num_loops + 1)}
  if last["best_of_n"] is not None:
    qpo_prompts[BEST_OF_N] = last["best_of_n"]
  critic_fit, return_prompts, trained = last["critic"], last["returns"], last["trained"]
  prompt_embeddings = embed(candidate_texts)
  del rm, embed  # the LM is now the fine-tuned encoder's, or freed
  if e.finetuned_baselines:  # the encoder trained as QPO's round 1 trains the policy
    run.release_for_training()  # its training state is the evaluation's peak: no target
    # beside it (reloaded for the scoring below, ~5 s)
    tuned = FinetunedSelectors(
        dataclasses.replace(lm, cfg=lm.cfg.replace(lora_rank=config.policy.lora_rank,
                                                   remat=config.policy.remat)),
        TrainSettings.of(config.train), seed=config.seed, mesh=run.mesh)
    del lm
    fit = tuned.fit(d0, candidate_texts, prompt_embeddings)
    fit["capacity"] = tuned.capacity()
    for name, ps in tuned.choose(texts).items():
      chosen[name], fits[name] = ps, fit
    del tuned
  else:
    del lm
  sources = list(dict.fromkeys(s for s, _ in cands))
  methods: dict[str, dict[str, float]] = collections.defaultdict(dict)
  comparisons: dict[str, dict[str, Any]] = collections.defaultdict(dict)
  intervals: dict[str, dict[str, Any]] = collections.defaultdict(dict)  # each method's own
  calls_per_pair = {}  # target calls for one (query, prompt): the demo sets in few-shot
  per_query: dict[str, dict[str, list[float]]] = {}
  diag: dict[str, Any] = {}
  returns: dict[str, Any] = {}
  for setting in e.settings:
    demos = task_base.demo_sets(splits["train"], e.num_demo_sets, e.num_demos,
                                seed=config.seed + 11, max_words=config.task.max_words) \
        if setting == evaluation.FEW_SHOT else ()
    calls_per_pair[setting] = max(1, len(demos))
    grid = _outcomes(task, target, cache, [(q, p) for p in prompts for q in queries], setting,
                     demos, e.max_new_tokens)
    acc = _correct(grid).reshape(len(prompts), len(queries))
    row = {p: i for i, p in enumerate(prompts)}
    cand_rows = [row[p] for p in candidate_texts]
    vectors = {"none": acc[row[""]], "manual": acc[row[task.manual_prompt]]}
    for source in sources:
      vectors[source_id(source)] = acc[[row[p] for s, p in cands if s == source]].mean(axis=0)
    vectors["best_train_prompt"] = acc[row[best_train]]
    for name, ps in chosen.items():
      vectors[name] = np.asarray([acc[row[p], i] for i, p in enumerate(ps)])
    qpo_outs = {m: _outcomes(task, target, cache, list(zip(queries, ps)), setting, demos,
                             e.max_new_tokens) for m, ps in qpo_prompts.items()}
    for m, outs in qpo_outs.items():
      vectors[m] = _correct(outs)
    vectors["best_test_prompt"] = acc[cand_rows[int(acc[cand_rows].mean(axis=1).argmax())]]
    vectors["oracle"] = acc[cand_rows].max(axis=0)
    if routed and setting == evaluation.ZERO_SHOT:
      purity = _purity_probe(task, target, cache, d0, splits["train"],
                             candidate_texts + [p for ps in qpo_prompts.values() for p in ps],
                             e.purity_queries, config.seed + 13, config.task.max_words)
      impure = [row[p] for p in candidate_texts if purity[p].purity < diagnostics.PURE]
      vectors["oracle_impure"] = acc[impure].max(axis=0) if impure else np.zeros(len(queries))
      label_route = {y: acc[row[p]] for y, p in class_best_prompts(d0).items()}
      gold = [q.label for q in queries]
      vectors["label_oracle"] = diagnostics.routed_by_label(gold, label_route)
      grid_pred = np.asarray([o.pred for o in grid]).reshape(len(prompts), len(queries))
      pool_nll = _gold_choice_nll(grid).reshape(len(prompts), len(queries))[cand_rows]
      diag = _diagnostics(task, purity, candidate_texts, cands, d0, chosen, grid_pred, row,
                          qpo_prompts, qpo_outs, acc[cand_rows], pool_nll, gold, label_route)
    if setting == e.settings[0] and return_prompts:
      base = qpo_prompts[qpo_id(num_loops)]
      returns = {"target_return": float(config.sample.target_return), "setting": setting,
                 "by_return": {str(r): {
                     "same_prompt": float(np.mean([a == b for a, b in zip(ps, base)])),
                     "accuracy": float(_correct(_outcomes(task, target, cache,
                                                          list(zip(queries, ps)), setting,
                                                          demos, e.max_new_tokens)).mean()),
                     "prompts": ps} for r, ps in return_prompts.items()}}
    for method, v in vectors.items():
      methods[method][setting] = float(v.mean())
      intervals[method][setting] = paired_bootstrap(v, np.zeros_like(v), seed=config.seed)
    last = vectors[qpo_id(num_loops)]
    for name, baseline in COMPARISONS.items():
      if baseline in vectors:
        comparisons[name][setting] = paired_bootstrap(last, vectors[baseline], seed=config.seed)
    per_query[setting] = {m: [float(x) for x in v] for m, v in vectors.items()
                          if m in PER_QUERY or m.startswith("qpo_")}
  result = {
      "task": task.name, "target": target.identity, "policy": config.policy.name,
      "split": e.split, "num_test_queries": len(queries), "settings": list(e.settings),
      "best_train_prompt": best_train, "reward_model": fits["reward_model"],
      "baselines": fits,
      "policy_trained_parameters": trained,
      "methods": dict(methods), "intervals": dict(intervals), **comparisons,
      "qpo_prompt_stats": {_short(m): prompt_stats(ps, set(candidate_texts), best_train)
                           for m, ps in qpo_prompts.items()},
      "num_source_prompts": len(candidate_texts),
      "source_sizes": {s: sum(src == s for src, _ in cands) for s in sources},
      "source_prompts": diag.pop("source_prompts", None) or [
          {"source": s, "prompt": p} for s, p in cands],
      **diag,
      "validation": _validation(config, task, target, cache, splits["train"], validation,
                                validation_prompts, best_train) if validation else None,
      "return_sensitivity": returns,
      "calls_per_pair": calls_per_pair,
      "qpo_prompts": {str(t): qpo_prompts[qpo_id(t)] for t in range(1, num_loops + 1)},
      **({"best_of_n": e.best_of_n, "best_of_n_critic": critic_fit,
          "best_of_n_prompts": qpo_prompts[BEST_OF_N]} if BEST_OF_N in qpo_prompts else {}),
      "queries": [{"uid": q.uid, "text": q.query, "gold": _gold(task, q),
                   **{f"{m}_prompt": ps[i] for m, ps in chosen.items()},
                   "qpo": {_short(m): ps[i] for m, ps in qpo_prompts.items()},
                   "correct": {s: {m: v[i] for m, v in per_query[s].items()}
                               for s in e.settings}}
                  for i, q in enumerate(queries)],
      "cost": cost_table(stage_costs(workdir, num_loops), total_usage(cache.usage().values()),
                         at_start, time.time() - started)}
  markdown = to_markdown(result)
  atomic_write_text(wd.eval("results.json"), json.dumps(result, indent=2))
  atomic_write_text(wd.eval("results.md"), markdown)
  report_plot.plot(result, workdir, label)
  report_plot.tensorboard(result, workdir)
  print(markdown, flush=True)
  return result


def _last_policy(run: Run, sampler, embed, texts: list[str], greedy: list[str]
                 ) -> dict[str, Any]:
  """What the report asks of the last loop's policy only: the critic's best of N
  (eval.best_of_n), its greedy prompts at other returns (does R* steer it?) and its
  trained parameter count."""
  config, e = run.config, run.config.eval
  out = {"best_of_n": None, "critic": None}
  if e.best_of_n:  # the critic picks among the last policy's greedy and sampled prompts
    drawn = sampler(texts, collect=True, seed=config.seed + 19, num_samples=e.best_of_n)
    critic = RewardModel(embed, seed=config.seed)
    last_data = run.wd.datasets()[-1]
    out["critic"] = {"dataset": last_data,
                     **critic.fit(dataset.read_dataset(run.wd.data(last_data))[0])}
    out["best_of_n"] = [_critic_pick(critic, q, [g] + d) for q, g, d in zip(texts, greedy, drawn)]
  out["returns"] = {float(r): [p[0] for p in sampler(texts, collect=False, seed=config.seed,
                                                     target_return=float(r))]
                    for r in e.returns}
  out["trained"] = train_step.trained_parameters(sampler.params, config.train.freeze_backbone)
  return out


def _short(method: str) -> str:
  """A QPO method's key in per-loop tables: the loop ("1", "2", ...) or "best_of_n"."""
  return method.removeprefix("qpo_loop_").removeprefix("qpo_")


def _critic_pick(critic: RewardModel, query: str, prompts: Sequence[str]) -> str:
  """The prompt the critic scores highest for the query (ties: the first, the greedy one)."""
  prompts = list(dict.fromkeys(prompts))
  return prompts[int(np.argmax(critic.pair_scores([query] * len(prompts), prompts)))]


def _diagnostics(task, purity, candidate_texts, cands, d0, chosen, grid_pred, row, qpo_prompts,
                 qpo_outs, pool_correct, pool_nll, gold, label_route) -> dict[str, Any]:
  """Purity of the source prompts, routing statistics of every per-query method, and what
  QPO's new prompts did (diagnostics.py)."""
  names = list(task.verbalizers)
  d0_acc = collections.defaultdict(list)
  for r in d0:
    d0_acc[r.prompt].append(r.accuracy)
  source_rows = []
  for s, p in cands:
    pu = purity[p]
    source_rows.append({"source": s, "prompt": p, "d0_accuracy": float(np.mean(d0_acc[p]))
                        if d0_acc[p] else None, "purity": pu.purity,
                        "majority": names[pu.majority] if names else pu.majority,
                        "purity_queries": pu.n})
  routing = {name: diagnostics.routing(ps, [grid_pred[row[p], i] for i, p in enumerate(ps)],
                                       purity, gold, label_route) for name, ps in chosen.items()}
  writing, examples = {}, {}
  for m, ps in qpo_prompts.items():
    outs = qpo_outs[m]
    routing[m] = diagnostics.routing(ps, [o.pred for o in outs], purity, gold, label_route)
    writing[m] = diagnostics.writing(ps, _correct(outs), pool_correct, _gold_choice_nll(outs),
                                     pool_nll, candidate_texts)
    examples[m] = diagnostics.examples(ps, _correct(outs), candidate_texts, purity, names)
  return {"source_prompts": source_rows, "routing": routing, "writing": writing,
          "new_prompt_examples": examples, "pure_threshold": diagnostics.PURE}


def _validation(config, task, target, cache, train, queries, qpo_prompts, best_train
                ) -> dict[str, Any]:
  """QPO's greedy prompts of every loop (and the best train prompt) on validation queries:
  whether later loops help, measured on queries no stage trained on or collected."""
  setting = list(config.eval.settings)[0]
  demos = task_base.demo_sets(train, config.eval.num_demo_sets, config.eval.num_demos,
                              seed=config.seed + 11, max_words=config.task.max_words) \
      if setting == evaluation.FEW_SHOT else ()
  lists = {"best_train_prompt": [best_train] * len(queries),
           **{qpo_id(t): ps for t, ps in qpo_prompts.items()}}
  return {"num_queries": len(queries), "setting": setting,
          "methods": {m: float(_correct(_outcomes(task, target, cache, list(zip(queries, ps)),
                                                  setting, demos, config.eval.max_new_tokens)
                                        ).mean()) for m, ps in lists.items()}}


def interval_text(c: dict[str, float]) -> str:
  """A difference with its interval: '+0.175 [+0.090, +0.260]'."""
  return f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"


def _share(x: float | None) -> str:
  return "-" if x is None else f"{x:.2f}"


def to_markdown(result: dict[str, Any]) -> str:
  settings = result["settings"]
  last = max(int(t) for t in result["qpo_prompts"])
  lines = [f"# QPO on {result['task']} (target {result['target']}, policy {result['policy']}, "
           f"{result['num_test_queries']} {result.get('split', 'test')} queries)", "",
           "| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
  for method, accs in result["methods"].items():
    lines.append(f"| {label(method, result['source_sizes'])} | "
                 + " | ".join(f"{accs[s]:.3f}" if s in accs else "-" for s in settings) + " |")
  lines += ["", f"QPO loop {last} minus a baseline, same queries (paired bootstrap 95% interval, "
            f"{BOOTSTRAP_RESAMPLES} resamples):", "",
            "| comparison | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
  for name, baseline in COMPARISONS.items():
    if name in result:
      lines.append(f"| QPO - {label(baseline)} | " + " | ".join(
          interval_text(result[name][s]) if s in result[name] else "-" for s in settings) + " |")
  lines += ["", "| QPO prompts | distinct | not a source prompt | = best train prompt |",
            "|---|---|---|---|"]
  for t, st in result["qpo_prompt_stats"].items():
    lines.append(f"| {'loop ' + t if t.isdigit() else t.replace('_', ' ')} | {st['distinct']} | {st['not_a_source_prompt']:.2f} | "
                 f"{st['best_train_prompt']:.2f} |")
  lines += _diagnostics_markdown(result)
  if result.get("validation"):
    v = result["validation"]
    lines += ["", f"Validation ({v['num_queries']} queries no stage trained on or collected, "
              f"{v['setting']}):", "", "| method | accuracy |", "|---|---|"]
    lines += [f"| {label(m)} | {a:.3f} |" for m, a in v["methods"].items()]
  if result.get("return_sensitivity"):
    r = result["return_sensitivity"]
    lines += ["", f"Does the return steer the last policy? Its greedy prompts at other R* "
              f"({r['setting']}):", "", f"| R* | same prompt as at R* = {r['target_return']:g} "
              "| accuracy |", "|---|---|---|"]
    lines += [f"| {float(k):g} | {b['same_prompt']:.2f} | {b['accuracy']:.3f} |"
              for k, b in r["by_return"].items()]
  if result.get("baselines"):
    lines += ["", "| per-query selector | trained parameters | frozen encoder | what |",
              "|---|---|---|---|"]
    for name, b in result["baselines"].items():
      c = b["capacity"]
      lines.append(f"| {label(name)} | {c['trained_parameters']:,} | "
                   f"{c['frozen_encoder_parameters']:,} | {c['what']} |")
    lines.append(f"| QPO policy | {result['policy_trained_parameters']:,} | 0 | "
                 "the whole prompt decision transformer |")
  lines += ["", "| stage | target calls | prompt tokens | generated tokens | wall time | "
            "peak memory (GiB) |", "|---|---|---|---|---|---|"]
  for stage, u in result["cost"].items():
    wall = f"{u['seconds'] / 60:.1f} min" if "seconds" in u else "-"
    memory = f"{u['peak_memory_gb']:.2f}" if "peak_memory_gb" in u else "-"
    lines.append(f"| {stage} | {u['calls']} | {u['prompt_tokens']} | {u['generated_tokens']} | "
                 f"{wall} | {memory} |")
  lines += ["", f"Best source prompt on train: {result['best_train_prompt']!r}"]
  return "\n".join(lines) + "\n"


def _diagnostics_markdown(result: dict[str, Any]) -> list[str]:
  if not result.get("routing"):
    return []
  pure = result["pure_threshold"]
  lines = ["", f"Writing or routing? (label-forcing: purity >= {pure}, the share of a prompt's "
           "most-predicted label)", "",
           "| method | label-forcing prompts | target gives the prompt's majority label | "
           "prompt's majority label is the gold one | a label router with those labels | "
           "new texts | accuracy with a new / a pool prompt | new right where no source is | "
           "new below every source's gold NLL |", "|---|---|---|---|---|---|---|---|---|"]
  for method, r in result["routing"].items():
    w = result["writing"].get(method, {})
    lines.append(
        f"| {label(method)} | {r['pure_fraction']:.2f} | {r['follows_majority']:.2f} | "
        f"{_share(r.get('majority_is_gold'))} | {_share(r.get('as_label_router'))} | "
        f"{_share(w.get('new_fraction'))} | {_share(w.get('accuracy_with_new'))} / "
        f"{_share(w.get('accuracy_with_pool'))} | "
        f"{_share(w.get('new_right_where_no_source_is'))} | "
        f"{_share(w.get('new_below_every_source_nll'))} |")
  for method, rows in result["new_prompt_examples"].items():
    if rows:
      lines += ["", f"{label(method)}: most used new prompts", "",
                "| prompt | queries | accuracy | purity | majority |", "|---|---|---|---|---|"]
      lines += [f"| {r['prompt']!r} | {r['queries']} | {r['accuracy']:.2f} | "
                f"{_share(r.get('purity'))} | {r.get('majority', '-')} |" for r in rows]
  lines += ["", "| source prompt | D_0 accuracy | purity | majority |", "|---|---|---|---|"]
  lines += [f"| {r['prompt']!r} | {_share(r['d0_accuracy'])} | {r['purity']:.2f} | "
            f"{r['majority']} |" for r in result["source_prompts"]]
  return lines
