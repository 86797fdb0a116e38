"""Multi-loop QPO (Algorithm 1): D_0, then for t = 1..T train, collect, merge; then evaluate.

Every stage leaves a finished artifact in the workdir and is skipped when it
is there, and every stage resumes when it is not:

  data/loop_0/                 D_0 (built chunk by chunk, or imported)
  policy/round_<t>/            the policy trained on D_{t-1} (orbax resume)
  data/loop_<t>.collect.json   collect-split queries and the prompts sampled for them
  data/loop_<t>/               D_t = D_{t-1} U every rewarded new record (the expert filter
                               picks a round's training rows from it, not the merge; after
                               the last round only with `loop.final_collection`)
  eval/                        test-split outcomes (through the cache), results table
  eval_cache.sqlite            every target result; nothing is evaluated twice
  xla_cache/                   compiled programs, when run through modes.run (config
                               `compile_cache`; JAX_COMPILATION_CACHE_DIR, if set, instead)

A stage's cost (cumulative target usage when it ended, its wall time, peak memory)
is written with its artifact, in one atomic step: the `cost` field of a dataset's
manifest.json and of a round's `final` marker. The report adds them up.

Kill the process anywhere and rerun the same command: it continues where it stopped.
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from typing import Any

from absl import logging
import ml_collections

from qpo_jax import config_rules, d0, evaluation, explore, report, rewards, rounds, stages, tokens
from qpo_jax.context import Run
from qpo_jax.stages import Stage
from qpo_jax import prompts as prompts_lib
from qpo_jax.eval_cache import EvalCache, total_usage
from qpo_jax.checkpoints.registry import LOADERS, load_tokenizer
from qpo_jax.policy.settings import TrainSettings
from qpo_jax.store import dataset, importers
from qpo_jax.store.records import record_from_outcome
from qpo_jax.targets import BACKENDS, Target
from qpo_jax.tasks import TASKS, base as task_base, data_spec, load_source, task_of
from qpo_jax.tasks.paper import svamp_fold_queries
from qpo_jax.tasks.sources import read_json_list
from qpo_jax.utils import atomic_write_text, peak_memory_gb, stage


def _field(config: ml_collections.ConfigDict, name: str) -> Any:
  node = config
  for part in name.split("."):
    if part not in node:
      raise ValueError(f"the config has no field {name} (every config has the same fields; "
                       "see configs/quickstart.py)")
    node = node[part]
  return node


def _check_model_path(config: ml_collections.ConfigDict, role: str) -> None:
  spec = config[role]
  kind = {"hf": "checkpoint directory", "gguf": "GGUF file"}.get(spec.name)
  if kind is None:
    return
  path = os.path.expanduser(spec.get("path") or "")
  if not path:
    raise ValueError(f"{role}: model {spec.name!r}: set `path` to the {kind} "
                     f"(--config.{role}.path=...)")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{role}.path={path!r}: the {kind} does not exist")


def validate(config: ml_collections.ConfigDict, policy: bool = True) -> None:
  """Fails at start, with the field at fault, on values that would fail hours later.

  Every mode calls it before it loads a model or writes a byte; `policy` is False for
  the modes that never train or run the policy (then its prompt length is not checked).
  """
  config_rules.check(config)
  if _field(config, "offline.rank_by") not in rewards.RANK_BY:
    raise ValueError(f"offline.rank_by={config.offline.rank_by!r} must be one of {rewards.RANK_BY}")
  if _field(config, "offline.returns") not in rewards.RETURNS:
    raise ValueError(f"offline.returns={config.offline.returns!r} must be one of {rewards.RETURNS}")
  if config.offline.returns == "query_centred" and not _field(config, "train.normalize"):
    raise ValueError("offline.returns='query_centred' centres normalised rewards: set "
                     "train.normalize=True")
  if 0 < _field(config, "loop.prompt_queries") < _field(config, "loop.screen_queries"):
    raise ValueError(f"loop.screen_queries={config.loop.screen_queries} must be at most "
                     f"loop.prompt_queries={config.loop.prompt_queries} (0: all D_0 queries; the screening "
                     "queries are the first of them)")
  if not config.task.file and config.task.name not in TASKS:
    raise ValueError(f"task.name={config.task.name!r} is not one of {sorted(TASKS)} (or "
                     "declare your own in a file: task.file)")
  backend = config.target.backend
  if backend not in BACKENDS:
    raise ValueError(f"target.backend={backend!r} is not one of {sorted(BACKENDS)}")
  if backend == "local" and config.target.name not in LOADERS:
    raise ValueError(f"target.name={config.target.name!r} is not one of {sorted(LOADERS)}")
  if config.policy.name not in LOADERS:
    raise ValueError(f"policy.name={config.policy.name!r} is not one of {sorted(LOADERS)}")
  for role in ("target", "policy") if backend == "local" else ("policy",):
    _check_model_path(config, role)
  TrainSettings.of(config.train)  # the settings a round trains with, checked now
  if config.offline.nll_term not in rewards.NLL_TERMS:
    raise ValueError(f"offline.nll_term={config.offline.nll_term!r} is not one of "
                     f"{rewards.NLL_TERMS}")
  task = task_of(config.task)
  spec = data_spec(task, config.task.data)
  if spec["kind"] == "files" and not os.path.isdir(os.path.expanduser(spec.get("dir") or "")):
    raise ValueError(f"task.data.dir={spec.get('dir') or ''!r} is not a directory (task "
                     f"{task.name!r} reads files from it)")
  if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in config.eval.returns):
    raise ValueError(f"eval.returns={tuple(config.eval.returns)!r} must be numbers (R* values)")
  if config.eval.split not in ("test", "validation"):
    raise ValueError(f"eval.split={config.eval.split!r} must be 'test' or 'validation'")
  for s in list(config.offline.settings) + list(config.eval.settings):
    if s not in evaluation.SETTINGS:
      raise ValueError(f"setting {s!r} is not one of {evaluation.SETTINGS}")
  if policy and config.offline.source == "build":  # imported prompts: when D_0 is imported
    tokenizer = load_tokenizer(config.policy)
    if tokenizer is not None:
      tokens.check_prompt_lengths(tokenizer,
                                  [p for _, p in prompts_lib.source_prompts(config.offline, task)],
                                  config.train.prompt_len)


def stage_cost(cache: EvalCache, started: float) -> dict[str, Any]:
  """A finished stage's `cost`: the cumulative target usage, the stage's wall time in the
  process that finished it, and that process's peak memory (a stage resumed after a
  kill counts only its last process)."""
  return {"usage": total_usage(cache.usage().values()), "seconds": round(time.time() - started, 1),
          "peak_memory_gb": peak_memory_gb()}


def _plain_text(text: str) -> str:
  """Case and punctuation folded: SVAMP's CSV copies of a problem are lower-cased and tokenised."""
  return re.sub(r"[^a-z0-9]", "", text.lower())


def _imported(config, task, splits) -> tuple[list, str]:
  """Records of a published log, restricted to queries of this run's train split.

  Prompt-OIRL logs index GSM8K's train.jsonl (whose rows our split rules divide into
  train and collect) and SVAMP's five CV folds (MAWPS, ASDiv-A and SVAMP problems);
  records of collect or test queries are dropped, and the rest get their query texts.
  """
  d = config.offline
  if d.source == "qpo_json":
    recs, summary = importers.import_qpo_json(d.path, task=task.name, target=d.target_name or None,
                                              verbalizers=task.verbalizers,
                                              max_bad_fraction=d.max_bad_fraction)
    return recs, str(summary)
  prompts, aliases = read_json_list(d.prompts_file), read_json_list(d.aliases_file)
  spec = data_spec(task, config.task.data)
  if task.name == "svamp":
    queries = [ex.query for ex in svamp_fold_queries(spec["dir"])]
    held_out = {_plain_text(ex.query) for s in ("collect", "test") for ex in splits[s]}
    keep = lambda text: _plain_text(text) not in held_out  # noqa: E731
  else:
    queries = [ex.query for ex in load_source(task, spec, "train")]
    train = {ex.query for ex in splits["train"]}
    keep = lambda text: text in train  # noqa: E731
  recs, summary = importers.import_prompt_oirl(d.path, task=task.name, prompts=prompts,
                                               aliases=aliases, queries=queries, keep=keep,
                                               max_bad_fraction=d.max_bad_fraction)
  return recs, str(summary)


def d0_queries(config: ml_collections.ConfigDict, train: list[task_base.Example]
               ) -> list[task_base.Example]:
  """The train queries a built D_0 tries every source prompt on (offline.num_queries, seeded);
  a peer optimiser compared with QPO is given the same ones."""
  return task_base.sample_queries(train, config.offline.num_queries or len(train),
                                  seed=config.seed, max_words=config.task.max_words)


def build_d0(run: Run) -> dict[str, Any]:
  """D_0 in <workdir>/data/loop_0: built on the target from source prompts, or imported."""
  config, d = run.config, run.config.offline
  out = run.wd.data(0)
  run.claim(Stage("d0"))
  if os.path.exists(os.path.join(out, dataset.MANIFEST)):
    return dataset.read_manifest(out)
  started = time.time()
  task, splits = run.task, run.splits
  if d.source in ("qpo_json", "prompt_oirl"):
    recs, summary = _imported(config, task, splits)
    print(summary, flush=True)
    tokenizer = load_tokenizer(config.policy)
    if tokenizer is not None:
      tokens.check_prompt_lengths(tokenizer, sorted({r.prompt for r in recs}),
                                    config.train.prompt_len)
    manifest = dataset.write_dataset(out, recs, normalizer=rewards.Normalizer.fit(
        r.reward for r in recs), records_per_shard=d.records_per_shard,
        meta={"loop": 0, "imported_from": d.path, "import_summary": summary,
              "cost": stage_cost(run.cache, started)})
  elif d.source == "build":
    queries = d0_queries(config, splits["train"])
    demos = task_base.demo_sets(splits["train"], d.num_demo_sets, d.num_demos, seed=config.seed,
                                max_words=config.task.max_words) \
        if evaluation.FEW_SHOT in d.settings else ()
    target, cache = run.target, run.cache
    manifest = d0.build(
        out, task, target, queries, run.source_prompts, settings=list(d.settings),
        demo_sets=demos, cache=cache, prompts_per_chunk=d.prompts_per_chunk,
        prompts_per_query=d.prompts_per_query, seed=config.seed, max_new_tokens=d.max_new_tokens,
        nll_term=d.nll_term, meta={"task": task.name, "target": target.identity},
        final_meta=lambda: {"cost": stage_cost(cache, started)})
  else:
    raise ValueError(f"offline.source={d.source!r} is not 'build', 'qpo_json' or 'prompt_oirl'")
  print(f"D_0: {manifest['count']} records, {manifest['queries']} queries, "
        f"{manifest['prompts']} prompts, reward {manifest['reward']} -> {out}", flush=True)
  return manifest


def collect_round(run: Run, t: int) -> dict[str, Any]:
  """Loop t's collection: sample prompts for fresh collect-split queries, evaluate, merge -> D_t.

  With `loop.explore` the sampled prompts are candidates and explore.py picks which
  new ones are scored, and on which queries; without it each sampled prompt is scored
  on its own query (the spec).
  """
  config, wd = run.config, run.wd
  out = wd.data(t)
  run.claim(Stage("collect", t))
  if os.path.exists(os.path.join(out, dataset.MANIFEST)):
    return dataset.read_manifest(out)
  started = time.time()
  c = config.loop
  task, splits, target, cache = run.task, run.splits, run.target, run.cache
  plan_path = wd.collect_plan(t)
  queries = task_base.sample_queries(splits["collect"], c.collect_batches * c.collect_queries,
                                     seed=config.seed + 1000 * t, balanced=False,
                                     max_words=config.task.max_words)
  old, previous = dataset.read_dataset(wd.data(t - 1))
  setting = list(config.offline.settings)[0]  # collection rewards use the run's first setting
  demos = task_base.demo_sets(splits["train"], config.offline.num_demo_sets,
                              config.offline.num_demos,
                              seed=config.seed, max_words=config.task.max_words) \
      if setting == evaluation.FEW_SHOT else ()
  if os.path.exists(plan_path):  # the prompts sampled before a kill are reused, not redrawn
    with open(plan_path) as f:
      plan = json.load(f)
    if [q.uid for q in queries] != plan["query_ids"]:
      raise ValueError(f"{plan_path} was made for other queries; delete it to resample")
  else:
    samples = rounds.prompt_sampler(run, t)([q.query for q in queries], collect=True,
                                            seed=config.seed + t)
    plan = {"query_ids": [q.uid for q in queries], "prompts": samples}
    if c.explore:
      d = config.offline
      pairs, plan["explore"] = explore.plan(
          samples=samples, queries=queries, dataset_records=old,
          kept_records=rewards.expert_filter(old, d.threshold, d.top_fraction, d.rank_by),
          source_prompts=[p for _, p in run.source_prompts], lm=run.frozen_lm(),
          train=splits["train"],
          score=lambda todo: evaluation.evaluate_pairs(
              task, target, todo, setting=setting, demo_sets=demos, cache=cache,
              max_new_tokens=config.offline.max_new_tokens),
          new_prompts=c.new_prompts, prompt_queries=c.prompt_queries,
          screen_queries=c.screen_queries, max_screen=c.max_screen,
          junk_quantile=c.junk_quantile, seed=config.seed + 1000 * t,
          max_words=config.task.max_words, task_description=task.manual_prompt,
          parents=c.parents, rewrites_per_prompt=c.rewrites, num_edits=c.edits,
          max_prompt_tokens=config.train.prompt_len - 1)
      plan["pairs"] = [[ex.uid, p] for ex, p in pairs]
    atomic_write_text(plan_path, json.dumps(plan))
  if "pairs" in plan:  # explored: a prompt's avg_acc is over every query it was scored on
    by_uid = {ex.uid: ex for ex in queries}
    by_uid.update({ex.uid: task_base.truncated(ex, config.task.max_words)
                   for ex in splits["train"]})
    pairs = [(by_uid[uid], p) for uid, p in plan["pairs"]]
    outcomes = evaluation.evaluate_pairs(task, target, pairs, setting=setting, demo_sets=demos,
                                         cache=cache, max_new_tokens=config.offline.max_new_tokens)
    prior: dict[str, list[float]] = collections.defaultdict(list)
    for r in old:
      if r.setting == setting:
        prior[r.prompt].append(r.accuracy)
    rows = rewards.with_rewards([p for _, p in pairs], outcomes, setting, task.kind,
                                nll_term=config.offline.nll_term, prior=prior)
  else:
    pairs = [(q, p) for q, ps in zip(queries, plan["prompts"]) for p in ps]
    outcomes = evaluation.evaluate_pairs(task, target, pairs, setting=setting, demo_sets=demos,
                                         cache=cache, max_new_tokens=config.offline.max_new_tokens)
    rows = []  # avg_acc: each collection batch's accuracy (the policy's prompts, evaluated together)
    per_batch = c.collect_queries * len(plan["prompts"][0])
    for start in range(0, len(pairs), per_batch):
      rows += rewards.with_rewards([p for _, p in pairs[start:start + per_batch]],
                                   outcomes[start:start + per_batch], setting, task.kind,
                                   by_prompt=False, nll_term=config.offline.nll_term)
  collect_ids = {q.uid for q in queries}
  collect_accuracy = evaluation.accuracy(  # the policy's own samples on collect queries
      [o for (q, _), o in zip(pairs, outcomes) if q.uid in collect_ids])
  new = [record_from_outcome(task=task, example=q, prompt=p, outcome=o, target=target.identity,
                             setting=setting, split="collect" if q.uid in collect_ids else "train",
                             prompt_source=f"qpo_loop_{t}", loop=t)
         for (q, p), o in zip(pairs, rows)]
  manifest = dataset.write_dataset(  # D_0's normaliser: R* means the same raw reward every round
      out, dataset.merge(old, new), normalizer=rewards.Normalizer.from_dict(previous["normalizer"]),
      records_per_shard=config.offline.records_per_shard,
      meta={"loop": t, "collected": len(new), "collect_accuracy": collect_accuracy,
            "cost": stage_cost(cache, started)})
  logging.info("loop %d: %d new records (collect accuracy %.3f), D_%d has %d", t, len(new),
               collect_accuracy, t, manifest["count"])
  return manifest


def run_loop(config: ml_collections.ConfigDict, workdir: str, target: Target | None = None
             ) -> dict[str, Any]:
  """The whole of Algorithm 1 plus the evaluation; returns the results table (see report.py).
  Checks the config and the workdir's stages first (`modes.run` does so, then calls
  `run_stages`); `target` replaces the config's (tests)."""
  validate(config)
  run = Run(config, workdir, target)
  run.check_workdir()
  return run_stages(run)


def run_stages(run: Run) -> dict[str, Any]:
  """`run_loop` for a caller that has checked the config and the workdir."""
  os.makedirs(run.workdir, exist_ok=True)
  wd, num_loops = run.wd, int(run.config.loop.num_loops)
  for s in stages.of_run(num_loops):
    if s.kind == "collect" and s.t == num_loops and not run.config.loop.final_collection:
      continue  # its records would train nothing
    if s.kind == "round" and s.t not in wd.finished_rounds():
      run.release_for_training()
    with stage(f"{s.work} ({s.artifact(wd)})"):
      if s.kind == "d0":
        build_d0(run)
      elif s.kind == "round":
        rounds.train_policy_round(run, s.t)
      else:
        collect_round(run, s.t)
  with stage(f"the evaluation ({wd.eval('')})"):
    return report.evaluate_and_report(run)
