"""What `main.py --mode` runs; each mode is a plain function(config, workdir) notebooks call too."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Callable

from absl import logging
import ml_collections

import numpy as np

from qpo_jax import decoding, distributed, evaluation, loop, optimize, report, sharding
from qpo_jax import workdir_lock
from qpo_jax import prompts as prompts_lib
from qpo_jax.eval_cache import EvalCache
from qpo_jax.checkpoints.registry import load_model
from qpo_jax.targets import run_target
from qpo_jax.checkpoints import export
from qpo_jax.policy import rounds
from qpo_jax.policy.model import RETURN_SCALE
from qpo_jax.policy.serve import PolicyServer
from qpo_jax.store import dataset, summary
from qpo_jax.targets.server import Limits, ModelServer, make_server
from qpo_jax.tasks import base as task_base
from qpo_jax.tasks import task_of, load_splits
from qpo_jax.utils import atomic_write_text, compile_cache, show_progress, stage
from qpo_jax.workdir import Workdir


def generate_answers(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Answers `config.generate.questions` with the target LLM; prints and saves them."""
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
  atomic_write_text(Workdir(workdir).answers, json.dumps(records, indent=2))
  logging.info("wrote %s/answers.json (%.1fs in all)", workdir, time.time() - start)
  return records


def sampled_queries(config: ml_collections.ConfigDict, split: str, n: int
                    ) -> tuple[task_base.Task, list[task_base.Example]]:
  """The task and `n` class-balanced queries of `split`, seeded by `config.seed` and cut to
  task.max_words: what evaluate_prompts and sample_prompts score (and `qpo_jax.queries`)."""
  task, splits = load_splits(config.task, (split,))
  return task, task_base.sample_queries(splits[split], n, seed=config.seed,
                                        max_words=config.task.max_words)


def evaluate_prompts(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Accuracy of each prompt on sampled queries of a split, the best one, and the per-query oracle.

  The oracle (a query counts as solved if any prompt solves it) is the headroom
  query-dependent prompting can reach. Results go through the evaluation cache
  in the workdir, so a rerun or a larger prompt list only pays for new pairs.
  """
  ev = config.eval_prompts
  task, queries = sampled_queries(config, ev.split, ev.num_queries)
  demos = ()
  if ev.setting == evaluation.FEW_SHOT:
    _, train = load_splits(config.task, ("train",))
    demos = task_base.demo_sets(train["train"], ev.num_demo_sets, ev.num_demos, seed=config.seed)
  target = run_target(config)
  os.makedirs(workdir, exist_ok=True)
  cache = EvalCache.of_workdir(workdir)
  prompts = prompts_lib.source_prompts(config, task, list(ev.prompts))
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
  atomic_write_text(Workdir(workdir).prompt_eval, json.dumps(result, indent=2))
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


def proxy(config: ml_collections.ConfigDict, workdir: str) -> PolicyServer:
  """Round `round`'s policy (0: the last finished) in front of the run's target."""
  sampler = rounds.prompt_sampler(config, workdir, config.round)
  return PolicyServer(sampler, task_of(config.task), run_target(config),
                      f"qpo-{config.task.name}-round{sampler.round}")


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


def serve_target(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Serves `config.target` (a local model) over an OpenAI-compatible API until interrupted."""
  del workdir
  _serve(config, ModelServer(load_model(config.target), config.target.name), config.target.name)


def serve_policy(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The trained policy as a prompt-optimising proxy in front of `config.target` (policy/serve.py).

  Uses round `round` (0: the last finished).
  """
  model = proxy(config, workdir)
  _serve(config, model, f"QPO policy round {model.round} in front of {config.target.name}")


def export_policy(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Round `round`'s policy (0: the last finished) as an HF-style directory (export.py)."""
  sampler = rounds.prompt_sampler(config, workdir, config.round)
  t = sampler.round
  manifest = dataset.read_manifest(Workdir(workdir).data(t - 1))
  meta = {"format": "qpo_jax PromptDT", "round": t, "task": config.task.name,
          "target": config.target.name, "policy_init": config.policy.name,
          "target_return": config.sample.target_return, "return_scale": RETURN_SCALE,
          "query_len": sampler.query_len, "prompt_len": sampler.prompt_len,
          "normalizer": manifest.get("normalizer")}
  out = export.export_policy(config.export.dir or Workdir(workdir).export(t),
                             sampler.cfg, sampler.params, sampler.tokenizer, meta)
  print(f"exported policy round {t} -> {out}", flush=True)
  return out


def build_d0(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """D_0 in <workdir>/data/loop_0: built on the target from source prompts, or imported logs."""
  return loop.build_d0(config, workdir)


def collect(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Collection and merge of loop `round` (0: the last finished): its policy's prompts
  evaluated -> D_round."""
  t = config.round or rounds.last_finished(workdir)
  target = run_target(config)
  manifest = loop.collect_round(config, workdir, t, target, EvalCache.of_workdir(workdir))
  print(f"D_{t}: {manifest['count']} records -> {Workdir(workdir).data(t)}", flush=True)
  return manifest


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The results table of a run: QPO per loop against the baselines on the test split."""
  target = run_target(config)
  return report.evaluate_and_report(config, workdir, target,
                                    EvalCache.of_workdir(workdir))


def run_loop(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Everything: D_0, T loops of train / collect / merge, evaluation, table and plot."""
  return loop.run_stages(config, workdir)  # run() checked the config and the workdir


def inspect_data(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Prints a dataset's report and writes its reward plot (the latest loop unless data.inspect)."""
  directory = config.data.inspect
  if not directory:
    loops = Workdir(workdir).datasets()
    if not loops:
      raise FileNotFoundError(f"no datasets under {workdir}/data; run --mode=build_d0 first "
                              "or set --config.data.inspect")
    directory = Workdir(workdir).data(loops[-1])
  recs, manifest = dataset.read_dataset(directory)
  report = summary.describe(recs, manifest)
  print(report, flush=True)
  png = summary.plot(recs, os.path.join(directory + "_rewards.png"), os.path.basename(directory))
  print(f"plot: {png}", flush=True)
  return report


def train_policy(config: ml_collections.ConfigDict, workdir: str):
  """Trains policy round `round` on D_{round-1} (0: the round after the last dataset; resumes
  if killed; skips if finished)."""
  t = config.round or (max(Workdir(workdir).datasets(), default=0) + 1)
  params = rounds.train_policy_round(config, workdir, t)
  print(f"policy round {t}: {Workdir(workdir).round(t)}", flush=True)
  return params


def sample_prompts(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Greedy prompts of round `round` (0: the last finished) for `eval_prompts.num_queries`
  test queries."""
  _, queries = sampled_queries(config, "test", config.eval_prompts.num_queries)
  sampler = rounds.prompt_sampler(config, workdir, config.round)
  prompts = sampler([q.query for q in queries], collect=False, seed=config.seed)
  rows = [{"query": q.query, "prompt": p[0]} for q, p in zip(queries, prompts)]
  for r in rows:
    print(f"{r['query'][:70]!r}\n    -> {r['prompt']!r}", flush=True)
  atomic_write_text(Workdir(workdir).sampled_prompts(sampler.round),
                    json.dumps(rows, indent=2))
  return rows


MODES: dict[str, Callable[[ml_collections.ConfigDict, str], object]] = {
    "generate": generate_answers,
    "evaluate_prompts": evaluate_prompts,
    "serve_target": serve_target,
    "serve_policy": serve_policy,
    "build_d0": build_d0,
    "inspect_data": inspect_data,
    "train_policy": train_policy,
    "collect": collect,
    "sample_prompts": sample_prompts,
    "evaluate": evaluate,
    "loop": run_loop,
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
  # one run per workdir (inspecting and serving the target read it and may run beside one)
  with (contextlib.nullcontext() if mode in SHARED_MODES else workdir_lock.locked(workdir, mode)):
    if staged:  # a stage made with other settings stops the run here
      rounds.check_workdir(config, workdir)
    # compiled programs persist in the workdir (off: JAX's own setting, e.g.
    # JAX_COMPILATION_CACHE_DIR)
    with (compile_cache(Workdir(workdir).compile_cache) if config.compile_cache
          else contextlib.nullcontext()), stage(f"--mode={mode} in {workdir}"):
      return MODES[mode](config, workdir)
