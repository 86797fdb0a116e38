"""QPO beside DSPy's MIPROv2 and GEPA on one target: test accuracy against target calls.

  .venv/bin/python experiments/compare_optimizers.py --qpo_workdir=/tmp/qpo_quickstart \
      --workdir=/tmp/qpo_peers --out=experiments/results/peers_tweet_emotion.json

Reads a finished QPO run (--qpo_workdir, made with the same --config): its report's test
queries, QPO's accuracy per loop and its target calls per stage. Starts `--mode=serve_target`
with the run's target on 127.0.0.1 (or uses --base_url) and runs each peer on the task's
train split through it: the D_0 queries QPO learnt from, the first 20% for the peer's own
training and the rest for its validation (MIPROv2's split when it is given a trainset alone,
given to GEPA too). Every request the server answers is counted by the server (GET /v1/usage):
requests, prompt and generated tokens, per peer and stage (a --base_url server without
/v1/usage leaves them "not counted").

Then each optimised program's instruction is scored by qpo_jax's evaluator (the run's target
and cache, the task's template, option likelihood) on the report's test queries, so every
method is measured by one evaluator; DSPy's own metric of the program on the same queries is
reported beside it (dspy.Evaluate through the server, calls counted apart).

Settings, all DSPy's own except where said:
* MIPROv2 auto=light and auto=medium in its zero-shot form (max_bootstrapped_demos=0,
  max_labeled_demos=0, as DSPy documents for instruction-only optimisation): QPO writes
  zero-shot instructions, and the evaluator scores an instruction alone.
* GEPA auto=light and auto=medium, the metric giving the gold label as feedback.
* The run's target is task model, proposer and reflection model: it is the only LM here.
* The task predictor answers as qpo_jax's evaluator does (`TaskAdapter`): the instruction in
  the task's template, the option the target finds most likely (one /v1/completions request
  with echo and logprobs). SmolLM2-135M writes no parsable answer in DSPy's chat or JSON
  format (0 of 3 tried), so with DSPy's default adapter every peer would score 0. Free-text
  outputs (MIPROv2's proposals; GEPA's reflections, through its default InstructionProposer
  given this adapter, a documented argument) go through DSPy's ChatAdapter, and one it
  cannot parse is read as the whole reply instead of failing the proposal.

Resumable: each peer's result is written to --workdir when it ends and a rerun skips it;
DSPy's cache lives in --workdir too (a peer interrupted and rerun sends fewer requests, so its
result then says `resumed`).
Runtime (2 CPU cores, SmolLM2-135M, TweetEval; 2026-12-06, another run sharing the cores):
80 minutes for the four peers (MIPROv2 light 13, medium 28; GEPA light 19, medium 19), 90 in
all. Expected: experiments/results/peers_tweet_emotion.md.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import typing
import urllib.request
from typing import Any

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import bench_common  # noqa: E402
from qpo_jax import evaluation, loop, report  # noqa: E402
from qpo_jax.context import Run  # noqa: E402
from qpo_jax.eval_cache import EvalCache  # noqa: E402
from qpo_jax.targets import HttpTarget, LocalTarget  # noqa: E402
from qpo_jax.tasks import CHOICE, load_splits  # noqa: E402
from qpo_jax.utils import atomic_write_text, load_config, read_json, show_progress  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("mipro_light", "mipro_medium", "gepa_light", "gepa_medium")
_CONFIG = flags.DEFINE_string("config", os.path.join(ROOT, "configs", "quickstart.py"),
                              "The QPO run's config (file[:args]).")
_QPO = flags.DEFINE_string("qpo_workdir", None, "A finished QPO run of --config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the peers' results, logs and caches go.")
_OUT = flags.DEFINE_string("out", "", "Write the table here (.json, with .md and .png beside).")
_BASE_URL = flags.DEFINE_string("base_url", "", "An OpenAI-compatible server of the target "
                                "(default: start --mode=serve_target on 127.0.0.1).")
_PEERS = flags.DEFINE_list("peers", list(PEERS), f"Which of {', '.join(PEERS)}.")
_THREADS = flags.DEFINE_integer("num_threads", 4, "DSPy's threads (requests at once).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 256, "Tokens the LM may write per request "
                                   "(proposals, reflections).")
_TRAIN = flags.DEFINE_integer("train_queries", 0, "Train queries for the peers (0: QPO's D_0).")
_TEST = flags.DEFINE_integer("test_queries", 0, "Score the first N report queries only (0: all; "
                             "for a quick look, not for the table).")
_SET = flags.DEFINE_multi_string("set", [], "A config override the QPO run used, key=value "
                                  "(as --config.key=value); repeat for more.")
_SERVER_TIMEOUT = flags.DEFINE_integer("server_timeout_s", 600, "Wait this long for the server.")


# --- the target: a server counting what it answers --------------------------------------------

def _get(url: str) -> dict[str, Any]:
  with urllib.request.urlopen(url, timeout=30) as resp:
    return json.loads(resp.read())


def with_overrides(config, overrides: list[str]):
  """The config with each key=value set (a value read as a Python literal, else as text)."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise SystemExit(f"--set {item!r}: expected key=value")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    if last not in node:
      raise SystemExit(f"--set {item!r}: the config has no field {key}")
    node[last] = value
  return config


@contextlib.contextmanager
def target_server(config_spec: str, overrides: list[str], workdir: str, base_url: str,
                  timeout_s: int):
  """Yields the server's base URL: --base_url, or `--mode=serve_target` started on a free
  127.0.0.1 port (stopped on exit; its log is <workdir>/serve_target.log)."""
  if base_url:
    yield base_url.rstrip("/")
    return
  log = open(os.path.join(workdir, "serve_target.log"), "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "main.py"), f"--config={config_spec}",
       "--mode=serve_target", f"--workdir={os.path.join(workdir, 'serve')}",
       "--config.serve.port=0", "--config.serve.host=127.0.0.1",
       "--config.serve.max_tokens=1024", "--config.serve.request_timeout_s=1800",
       "--config.serve.chunk_tokens=1024", "--config.serve.max_prompt_tokens=7000",
       *(f"--config.{o}" for o in overrides)], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
  try:
    deadline = time.time() + timeout_s
    url = ""
    while not url:
      line = proc.stdout.readline()
      if not line and proc.poll() is not None:
        raise RuntimeError(f"serve_target exited with {proc.returncode}; see {log.name}")
      found = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
      url = found.group(1) if found else ""
      if time.time() > deadline:
        raise RuntimeError(f"serve_target did not start within {timeout_s} s; see {log.name}")
    yield url
  finally:
    proc.terminate()
    try:
      proc.wait(30)
    except subprocess.TimeoutExpired:
      proc.kill()
    log.close()


def usage(url: str) -> dict[str, Any] | None:
  """The server's count of answered requests (None: the server does not count)."""
  try:
    return _get(f"{url}/usage")
  except (OSError, ValueError):
    return None


def usage_delta(before: dict | None, after: dict | None) -> dict[str, int] | None:
  if before is None or after is None:
    return None
  out = {k: after[k] - before[k] for k in ("requests", "prompt_tokens", "completion_tokens")}
  for route, name in (("/v1/chat/completions", "generation_requests"),
                      ("/v1/completions", "scoring_requests")):
    out[name] = (after["by_route"].get(route, {}).get("requests", 0)
                 - before["by_route"].get(route, {}).get("requests", 0))
  return out


# --- DSPy: the task as a program, answered as the evaluator answers ---------------------------

def task_program(dspy, task, options: tuple[str, ...]):
  """dspy.Predict over query -> answer (one of the task's options), starting from the task's
  manual instruction."""
  fields = {"query": (str, dspy.InputField()),
            "answer": (typing.Literal[options], dspy.OutputField())}
  signature = dspy.make_signature(fields, task.manual_prompt or "Answer the question.",
                                  signature_name=f"{task.name}_task")
  return dspy.Predict(signature)


def make_adapter(dspy, task, scorer: HttpTarget, examples: dict[str, Any]):
  """See the module docstring; `examples` maps a query text to its qpo_jax Example."""

  from dspy.utils.exceptions import AdapterParseError  # pylint: disable=g-import-not-at-top

  class TaskAdapter(dspy.ChatAdapter):
    """The task predictor's answer is the evaluator's; other outputs go through ChatAdapter."""

    def __init__(self):
      super().__init__(use_json_adapter_fallback=False)

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
      if set(signature.input_fields) != {"query"} or set(signature.output_fields) != {"answer"}:
        return super().__call__(lm, lm_kwargs, signature, demos, inputs)
      ex = examples[inputs["query"]]
      shown = [examples[d["query"]] for d in demos if d.get("query") in examples]
      text = task.render(ex, signature.instructions, shown)
      options = list(task.options(ex))
      nll, _ = scorer.score_options([text], [options])
      return [{"answer": options[int(np.argmin(nll[0]))]}]

    def parse(self, signature, completion):
      try:
        return super().parse(signature, completion)
      except AdapterParseError:
        names = list(signature.output_fields)
        if any(signature.output_fields[n].annotation is not str for n in names):
          raise
        text = re.sub(r"\[\[ ## \w+ ## \]\]", "", completion).strip()
        return {n: (text if n == names[-1] else "") for n in names}

  return TaskAdapter()


def to_dspy(dspy, task, rows) -> list:
  return [dspy.Example(query=ex.query, answer=task.options(ex)[ex.label]).with_inputs("query")
          for ex in rows]


def metric(gold, pred, trace=None) -> float:
  del trace
  return float(str(getattr(pred, "answer", "")).strip().lower() == gold.answer.strip().lower())


def feedback_metric(dspy):
  def score(gold, pred, trace=None, pred_name=None, pred_trace=None):
    del trace, pred_name, pred_trace
    ok = metric(gold, pred)
    said = getattr(pred, "answer", "")
    return dspy.Prediction(score=ok, feedback="Correct." if ok else
                           f"Wrong: the answer is {gold.answer}, not {said}.")
  return score


def optimizer(dspy, name: str, lm, seed: int, threads: int, adapter):
  family, level = name.split("_")
  if family == "mipro":
    return dspy.MIPROv2(metric=metric, auto=level, prompt_model=lm, task_model=lm,
                        max_bootstrapped_demos=0, max_labeled_demos=0, num_threads=threads,
                        seed=seed, verbose=False)
  from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer  # pylint: disable=g-import-not-at-top
  return dspy.GEPA(metric=feedback_metric(dspy), auto=level, reflection_lm=lm,
                   instruction_proposer=InstructionProposer(adapter=adapter),
                   num_threads=threads, seed=seed)


def run_peer(dspy, name: str, program, train, val, url: str, lm, seed: int, threads: int,
             test, adapter) -> dict[str, Any]:
  before, start = usage(url), time.time()
  opt = optimizer(dspy, name, lm, seed, threads, adapter)
  best = opt.compile(program, trainset=train, valset=val)
  optimised, minutes = usage(url), (time.time() - start) / 60
  evaluate = dspy.Evaluate(devset=test, metric=metric, num_threads=threads,
                           display_progress=False, provide_traceback=False)
  dspy_score = evaluate(best).score / 100.0
  return {"instruction": best.predictors()[0].signature.instructions,
          "calls": usage_delta(before, optimised), "test_calls": usage_delta(optimised, usage(url)),
          "minutes": minutes, "dspy_metric": dspy_score}


# --- the table ---------------------------------------------------------------------------------

def qpo_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
  """QPO per loop: its report's accuracy, and its target calls (D_0; online collection)."""
  cost, rows = result["cost"], []
  for t in sorted(int(k) for k in result["qpo_prompts"]):
    online = sum(cost.get(f"collect_{s}", {}).get("calls", 0) for s in range(1, t))
    acc = result["intervals"][f"qpo_loop_{t}"]["zero_shot"]
    rows.append({"method": f"QPO loop {t}", "accuracy": acc["mean"],
                 "interval": f"[{acc['low']:.3f}, {acc['high']:.3f}]",
                 "qpo_minus": "", "dspy_metric": "", "offline_calls": cost["d0"]["calls"], "online_calls": online,
                 "generated_tokens": 0, "minutes": "", "instruction": "per query"})
  return rows


def interval(correct: list[float], seed: int) -> tuple[float, str]:
  b = report.paired_bootstrap(correct, [0.0] * len(correct), seed)
  return b["mean"], f"[{b['low']:.3f}, {b['high']:.3f}]"


def qpo_minus(result: dict[str, Any], correct: list[float], seed: int) -> str:
  """QPO's last loop minus a method, per query, with its paired bootstrap 95% interval."""
  t = max(int(k) for k in result["qpo_prompts"])
  qpo = [q["correct"]["zero_shot"][f"qpo_loop_{t}"] for q in result["queries"]][:len(correct)]
  return report.interval_text(report.paired_bootstrap(qpo, correct, seed))


def plot(rows: list[dict[str, Any]], path: str) -> None:
  """Test accuracy against target calls (log x), one line per method family."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5))
  families: dict[str, list] = {}
  for r in rows:
    if not isinstance(r["online_calls"], int):  # a server that does not count
      continue
    calls = r["offline_calls"] + r["online_calls"]
    if calls:
      families.setdefault(r["method"].split(" ")[0], []).append((calls, r["accuracy"], r["method"]))
  for family, points in families.items():
    points.sort()
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=family)
    for x, y, name in points:
      ax.annotate(name.split(" ", 1)[-1], (x, y), fontsize=7, xytext=(3, 3),
                  textcoords="offset points")
  ax.set_xscale("log")
  ax.set_xlabel("target calls (QPO: D_0 + online collection; peers: all, server-counted)")
  ax.set_ylabel("test accuracy (qpo_jax evaluator)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  import dspy  # pylint: disable=g-import-not-at-top

  show_progress(False)
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  config = with_overrides(load_config(_CONFIG.value), _SET.value)
  result = read_json(os.path.join(_QPO.value, "eval", "results.json"), None)
  if result is None:
    raise SystemExit(f"no report at {_QPO.value}/eval/results.json: run --qpo_workdir's QPO first")
  for name in _PEERS.value:
    if name not in PEERS:
      raise SystemExit(f"--peers: {name!r} is not one of {', '.join(PEERS)}")
  task, splits = load_splits(config.task, ("train", config.eval.split))
  if task.kind != CHOICE:
    raise SystemExit(f"task {task.name} is not a classification task; the peers run on NLU tasks")
  queries = report.report_queries(config, splits[config.eval.split])
  if [q.uid for q in queries] != [q["uid"] for q in result["queries"]]:
    raise SystemExit(f"--config {_CONFIG.value} does not give the test queries of "
                     f"{_QPO.value}'s report: pass the config that run used")
  queries = queries[:_TEST.value or None]
  train_rows = loop.d0_queries(config, splits["train"])[:_TRAIN.value or None]
  cut = len(train_rows) - max(1, int(len(train_rows) * 0.8))
  examples = {ex.query: ex for ex in train_rows + queries}

  target = Run(config).target
  cache = EvalCache(os.path.join(workdir, "eval_cache.sqlite"))
  tokenizer = target.lm.tokenizer if isinstance(target, LocalTarget) and target.chat else None

  def evaluator(prompt: str) -> list[float]:
    out = evaluation.evaluate_pairs(task, target, [(q, prompt) for q in queries], cache=cache)
    return [o.correct for o in out]

  rows = qpo_rows(result)
  for r in rows:  # the one evaluator: QPO's own prompts scored again here give its report's figure
    t = r["method"].split()[-1]
    again = evaluation.evaluate_pairs(
        task, target, list(zip(queries, result["qpo_prompts"][t])), cache=cache)
    r["accuracy_here"] = float(np.mean([o.correct for o in again]))
    r["qpo_minus"] = qpo_minus(result, [o.correct for o in again], config.seed) \
        if t != max(result["qpo_prompts"], key=int) else ""
  manual = evaluator(task.manual_prompt)  # where every peer starts
  acc, ci = interval(manual, config.seed)
  rows.append({"method": "manual instruction", "accuracy": acc, "interval": ci,
               "qpo_minus": qpo_minus(result, manual, config.seed),
               "dspy_metric": "", "offline_calls": 0, "online_calls": 0, "generated_tokens": 0,
               "minutes": "", "instruction": task.manual_prompt})

  with target_server(_CONFIG.value, _SET.value, workdir, _BASE_URL.value, _SERVER_TIMEOUT.value) as url:
    model = _get(f"{url}/models")["data"][0]["id"]
    lm = dspy.LM(f"openai/{model}", api_base=url, api_key="unused", max_tokens=_MAX_TOKENS.value,
                 num_retries=3)
    scorer = HttpTarget(url, model, chat_tokenizer=tokenizer, concurrency=1)
    adapter = make_adapter(dspy, task, scorer, examples)
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True,
                         disk_cache_dir=os.path.join(workdir, "dspy_cache"))
    dspy.configure(lm=lm, adapter=adapter)
    train, test = to_dspy(dspy, task, train_rows), to_dspy(dspy, task, queries)
    options = task.options(queries[0])
    for name in _PEERS.value:
      path = os.path.join(workdir, f"{name}.json")
      found = read_json(path, None)
      if found is None:
        started = os.path.exists(path + ".started")
        atomic_write_text(path + ".started", "")
        found = run_peer(dspy, name, task_program(dspy, task, options), train[:cut], train[cut:],
                         url, lm, int(config.seed), _THREADS.value, test, adapter)
        found["resumed"] = started
        atomic_write_text(path, json.dumps(found, indent=2))
        os.remove(path + ".started")
      correct = evaluator(found["instruction"])
      acc, ci = interval(correct, config.seed)
      calls = found["calls"] or {}
      rows.append({"method": name.replace("mipro", "MIPROv2").replace("gepa", "GEPA").replace(
                       "_", " "), "accuracy": acc, "interval": ci,
                   "qpo_minus": qpo_minus(result, correct, config.seed),
                   "dspy_metric": found["dspy_metric"], "offline_calls": 0,
                   "online_calls": calls.get("requests", "not counted"),
                   "generated_tokens": calls.get("completion_tokens", "not counted"),
                   "minutes": round(found["minutes"], 1), "instruction": found["instruction"],
                   "calls": found["calls"], "test_calls": found["test_calls"],
                   "resumed": found["resumed"]})
      print(rows[-1], flush=True)

  meta = bench_common.run_meta(
      config=os.path.relpath(_CONFIG.value.partition(":")[0], ROOT) + (
          ":" + _CONFIG.value.partition(":")[2] if ":" in _CONFIG.value else ""),
      overrides=_SET.value,
      task=task.name, target=config.target.name, test_queries=len(queries),
      peer_train=cut, peer_val=len(train_rows) - cut, dspy=dspy.__version__,
      server=_BASE_URL.value or "serve_target on 127.0.0.1")
  if _OUT.value:
    columns = ["method", "accuracy", "interval", "qpo_minus", "dspy_metric", "offline_calls",
               "online_calls", "generated_tokens", "minutes", "instruction"]
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
      cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]).replace("|", "/")
               .replace("\n", " ")[:120] for c in columns]
      table.append("| " + " | ".join(cells) + " |")
    atomic_write_text(_OUT.value, json.dumps({"meta": meta, "rows": rows}, indent=2))
    head = (f"# {task.name}: QPO beside DSPy's optimisers on {config.target.name}\n\n"
            f"Measured {meta['date']} at {meta['commit']} ({meta['machine']['cpus']} CPUs) by "
            f"experiments/compare_optimizers.py: every accuracy is qpo_jax's evaluator on the "
            f"same {len(queries)} {config.eval.split} queries; peers' calls are the requests "
            f"the server answered while they optimised (their test evaluation apart: `test_calls` "
            f"in the JSON); QPO's are its stages' target calls. The peers trained on "
            f"{cut} and validated on {len(train_rows) - cut} of QPO's D_0 queries.\n\n")
    atomic_write_text(os.path.splitext(_OUT.value)[0] + ".md", head + "\n".join(table) + "\n")
    plot(rows, os.path.splitext(_OUT.value)[0] + ".png")
  print(json.dumps(meta))


if __name__ == "__main__":
  flags.mark_flags_as_required(["qpo_workdir", "workdir"])
  app.run(main)
