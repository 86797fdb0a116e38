"""What `main.py --mode` runs: each mode is a function of the run (context.py), which `run`
builds once from (config, workdir) after checking both; notebooks call `run` too."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Callable

from absl import logging
import jax
import ml_collections

import numpy as np

from qpo_jax import decoding, distributed, evaluation, loop, optimize, report, rounds, sharding
from qpo_jax import workdir_lock
from qpo_jax.checkpoints.registry import load_model
from qpo_jax.checkpoints import export
from qpo_jax.context import Run
from qpo_jax.policy.model import RETURN_SCALE
from qpo_jax.policy.serve import PolicyServer
from qpo_jax.store import dataset, summary
from qpo_jax.targets.server import Limits, ModelServer, make_server
from qpo_jax.tasks import base as task_base
from qpo_jax.utils import atomic_write_text, compile_cache, show_progress, stage


def generate_answers(run: Run) -> list[dict]:
  """Answers `config.generate.questions` with the target LLM; prints and saves them."""
  config, workdir = run.config, run.workdir
  start = time.time()
  lm = load_model(config.target)
  lm = dataclasses.replace(lm, params=sharding.shard_params(lm.params, None))  # once, not per call
  if lm.tokenizer is None:
    raise ValueError(f"target {config.target.name!r} has no tokenizer; set target.tokenizer_path")
  logging.info("loaded %s (%.1fM parameters) in %.1fs", config.target.name,
               lm.cfg.num_params() / 1e6, time.time() - start)
  gen = config.generate
  answers = decoding.generate_text(lm, list(gen.questions), max_new_tokens=gen.max_new_tokens,
                                   seed=config.seed, chat=gen.chat, batch_size=gen.batch_size)
  records = [{"question": q, "answer": a} for q, a in zip(gen.questions, answers)]
  for r in records:
    print(f"Q: {r['question']}\nA: {r['answer']}\n", flush=True)
  os.makedirs(workdir, exist_ok=True)
  atomic_write_text(run.wd.answers, json.dumps(records, indent=2))
  logging.info("wrote %s/answers.json (%.1fs in all)", workdir, time.time() - start)
  return records


def sampled_queries(run: Run, split: str, n: int) -> list[task_base.Example]:
  """`n` class-balanced queries of `split`, seeded by `config.seed` and cut to
  task.max_words: what evaluate_prompts and sample_prompts score (and `qpo_jax.queries`)."""
  return task_base.sample_queries(run.splits[split], n, seed=run.config.seed,
                                  max_words=run.config.task.max_words)


def evaluate_prompts(run: Run) -> dict:
  """Accuracy of each prompt on sampled queries of a split, the best one, and the per-query oracle.

  The oracle (a query counts as solved if any prompt solves it) is the headroom
  query-dependent prompting can reach. Results go through the evaluation cache
  in the workdir, so a rerun or a larger prompt list only pays for new pairs.
  """
  config, task = run.config, run.task
  ev = config.eval_prompts
  queries = sampled_queries(run, ev.split, ev.num_queries)
  demos = ()
  if ev.setting == evaluation.FEW_SHOT:
    demos = task_base.demo_sets(run.splits["train"], ev.num_demo_sets, ev.num_demos,
                                seed=config.seed)
  target, cache = run.target, run.cache
  prompts = [("config", p) for p in ev.prompts] or run.source_prompts
  rows, per_query = [], []
  for source, prompt in prompts:
    out = evaluation.evaluate_pairs(task, target, [(q, prompt) for q in queries],
                                    setting=ev.setting, demo_sets=demos, cache=cache,
                                    max_new_tokens=ev.max_new_tokens)
    per_query.append([o.accuracy for o in out])
    rows.append({"source": source, "prompt": prompt, "accuracy": evaluation.accuracy(out)})
    print(f"{rows[-1]['accuracy']:6.3f}  [{source}] {prompt[:80]!r}", flush=True)
  best = max(rows, key=lambda r: r["accuracy"])
  result = {"task": task.name, "split": ev.split, "setting": ev.setting,
            "num_queries": len(queries), "prompts": rows, "best": best,
            "oracle": float(np.mean(np.max(np.asarray(per_query), axis=0))),
            "usage": cache.usage().get(target.identity, {})}
  print(f"best single prompt {best['accuracy']:.3f}; per-query oracle {result['oracle']:.3f} "
        f"over {len(prompts)} prompts x {len(queries)} queries", flush=True)
  atomic_write_text(run.wd.prompt_eval, json.dumps(result, indent=2))
  return result


def http_server(config: ml_collections.ConfigDict, model):
  """A server of `model`'s routes bound to config.serve's host and port, with its bounds and
  API key (not serving yet)."""
  serve = config.serve
  limits = Limits(max_tokens=serve.max_tokens, max_body_bytes=serve.max_body_bytes,
                  request_timeout_s=serve.request_timeout_s,
                  max_prompt_tokens=serve.max_prompt_tokens, chunk_tokens=serve.chunk_tokens)
  return make_server(model, serve.host, serve.port, api_key=_api_key(config), limits=limits)


def _api_key(config: ml_collections.ConfigDict) -> str:
  env = config.serve.api_key_env
  return os.environ.get(env, "") if env else ""


def proxy(run: Run) -> PolicyServer:
  """Round `round`'s policy (0: the last finished) in front of the run's target."""
  sampler = rounds.prompt_sampler(run, run.config.round)
  return PolicyServer(sampler, run.task, run.target,
                      f"qpo-{run.config.task.name}-round{sampler.round}")


def _serve(config: ml_collections.ConfigDict, model, what: str) -> None:
  """Serves `model`'s routes on config.serve (with its bounds) until interrupted."""
  show_progress(False)  # one access-log line per request, not a progress bar per stage
  server = http_server(config, model)
  host, port = server.server_address[:2]
  print(f"serving {what} at http://{host}:{port}/v1"
        f"{' (API key required)' if _api_key(config) else ''}; Ctrl-C stops", flush=True)
  try:
    server.serve_forever()
  finally:
    server.server_close()


def serve_target(run: Run) -> None:
  """Serves `config.target` (a local model) over an OpenAI-compatible API until interrupted."""
  config = run.config
  _serve(config, ModelServer(load_model(config.target), config.target.name), config.target.name)


def serve_policy(run: Run) -> None:
  """The trained policy as a prompt-optimising proxy in front of `config.target` (policy/serve.py).

  Uses round `round` (0: the last finished).
  """
  model = proxy(run)
  _serve(run.config, model,
         f"QPO policy round {model.round} in front of {run.config.target.name}")


def export_policy(run: Run) -> str:
  """Round `round`'s policy (0: the last finished) as an HF-style directory (export.py)."""
  config = run.config
  sampler = rounds.prompt_sampler(run, config.round)
  t = sampler.round
  manifest = dataset.read_manifest(run.wd.data(t - 1))
  meta = {"format": "qpo_jax PromptDT", "round": t, "task": config.task.name,
          "target": config.target.name, "policy_init": config.policy.name,
          "target_return": config.sample.target_return, "return_scale": RETURN_SCALE,
          "query_len": sampler.query_len, "prompt_len": sampler.prompt_len,
          "normalizer": manifest.get("normalizer")}
  out = export.export_policy(config.export.dir or run.wd.export(t),
                             sampler.cfg, sampler.params, sampler.tokenizer, meta)
  print(f"exported policy round {t} -> {out}", flush=True)
  return out


def collect(run: Run) -> dict:
  """Collection and merge of loop `round` (0: the last finished): its policy's prompts
  evaluated -> D_round."""
  t = run.config.round or rounds.last_finished(run.workdir)
  manifest = loop.collect_round(run, t)
  print(f"D_{t}: {manifest['count']} records -> {run.wd.data(t)}", flush=True)
  return manifest


def inspect_data(run: Run) -> str:
  """Prints a dataset's report and writes its reward plot (the latest loop unless
  offline.inspect)."""
  directory = run.config.offline.inspect
  if not directory:
    loops = run.wd.datasets()
    if not loops:
      raise FileNotFoundError(f"no datasets under {run.workdir}/data; run --mode=build_d0 "
                              "first or set --config.offline.inspect")
    directory = run.wd.data(loops[-1])
  recs, manifest = dataset.read_dataset(directory)
  report = summary.describe(recs, manifest)
  print(report, flush=True)
  png = summary.plot(recs, os.path.join(directory + "_rewards.png"), os.path.basename(directory))
  print(f"plot: {png}", flush=True)
  return report


def train_policy(run: Run) -> str:
  """Trains policy round `round` on D_{round-1} (0: the round after the last dataset; resumes
  if killed; skips if finished); returns the round's directory."""
  t = run.config.round or (max(run.wd.datasets(), default=0) + 1)
  rounds.train_policy_round(run, t)
  print(f"policy round {t}: {run.wd.round(t)}", flush=True)
  return run.wd.round(t)


def sample_prompts(run: Run) -> list[dict]:
  """Greedy prompts of round `round` (0: the last finished) for `eval_prompts.num_queries`
  test queries."""
  config = run.config
  queries = sampled_queries(run, "test", config.eval_prompts.num_queries)
  sampler = rounds.prompt_sampler(run, config.round)
  prompts = sampler([q.query for q in queries], collect=False, seed=config.seed)
  rows = [{"query": q.query, "prompt": p[0]} for q, p in zip(queries, prompts)]
  for r in rows:
    print(f"{r['query'][:70]!r}\n    -> {r['prompt']!r}", flush=True)
  atomic_write_text(run.wd.sampled_prompts(sampler.round),
                    json.dumps(rows, indent=2))
  return rows


MODES: dict[str, Callable[[Run], object]] = {
    "generate": generate_answers,
    "evaluate_prompts": evaluate_prompts,
    "serve_target": serve_target,
    "serve_policy": serve_policy,
    "build_d0": loop.build_d0,  # D_0: built on the target from source prompts, or imported
    "inspect_data": inspect_data,
    "train_policy": train_policy,
    "collect": collect,
    "sample_prompts": sample_prompts,
    "evaluate": report.evaluate_and_report,  # the results table of a finished run
    "loop": loop.run_stages,  # everything: D_0, T loops, the evaluation
    "optimize": optimize.optimize,
    "export_policy": export_policy,
}


# What may run beside another mode on the same workdir: it writes no stage, cache or output there.
SHARED_MODES = ("inspect_data", "serve_target")
# What neither makes nor uses a run's stages (D_0, rounds, collections) or the policy: it is
# not checked against their fingerprints or the policy's prompt length.
STAGELESS_MODES = ("generate", "evaluate_prompts", "serve_target", "inspect_data")
# What runs over several processes (the stages of a run); the rest serve or inspect from one.
MULTI_PROCESS_MODES = ("build_d0", "train_policy", "collect", "sample_prompts", "evaluate",
                       "evaluate_prompts", "loop")


def run(mode: str, config: ml_collections.ConfigDict, workdir: str):
  if mode not in MODES:
    raise ValueError(f"--mode={mode!r} is not one of {sorted(MODES)}")
  if distributed.multi() and mode not in MULTI_PROCESS_MODES:
    raise ValueError(f"--mode={mode} runs in one process; over several processes run one of "
                     f"{', '.join(MULTI_PROCESS_MODES)}")
  if distributed.multi() and config.target.backend != "local":
    raise ValueError(f"target.backend={config.target.backend!r}: a multi-process run evaluates "
                     "a local target in lockstep; call an HTTP target from one process")
  staged = mode not in STAGELESS_MODES
  loop.validate(config, policy=staged)  # before any model is loaded or any byte written
  show_progress(config.progress)
  run = Run(config, workdir)
  # one run per workdir (inspecting and serving the target read it and may run beside one)
  with (contextlib.nullcontext() if mode in SHARED_MODES else workdir_lock.locked(workdir, mode)):
    if staged:  # a stage made with other settings stops the run here
      run.check_workdir()
    with _persist_compiled(run), stage(f"--mode={mode} in {workdir}"):
      return MODES[mode](run)


def _persist_compiled(run: Run) -> contextlib.AbstractContextManager:
  """Where compiled programs persist: JAX's cache directory when the user gave one
  (JAX_COMPILATION_CACHE_DIR or jax.config: one cache for many workdirs of the same models,
  as in a sweep or CI), else the workdir's xla_cache; `compile_cache=False`: JAX's own
  setting."""
  if not run.config.compile_cache or jax.config.jax_compilation_cache_dir:
    return contextlib.nullcontext()
  return compile_cache(run.wd.compile_cache)
