"""Which rows the policy learns from, across tasks: three expert filters.

  QPO_DATA=/path/to/data python experiments/filter_ablation.py --root=/tmp/qpo_filters \
      [--tasks=tweet_emotion,boolq] [--filters=reward,all_right] [--num_loops=2] [--dry_run]

Round 1 of QPO is trained from one D_0 per task under each filter and its greedy prompts
are scored on the task's *validation* split (never in D_0, never collected; the test split
is not read), beside the report's frozen selectors and the best train prompt:
  advantage  offline.rank_by=advantage, top_fraction=0.05: each query's one right prompt
             that is most specific to it (the quickstart's recipe before a7ce397), 3 epochs
  reward     rank_by=reward, top_fraction=0.05: the spec's ranking (the recipe's), 3 epochs
  all_right  top_fraction=1.0: every prompt that was right on the query (8-16 rows per
             query on these tasks), 1 epoch: already more steps than the others' 3
The filter decides what the policy can learn: one row per query teaches it which prompt
goes with which query (routing), all right rows teach it which prompts are right most
often. Tasks: tweet_emotion (configs/quickstart.py), ag_news and boolq (configs/nlu.py,
which read $QPO_DATA). D_0 is built by the first filter's run and copied, with its
result cache, into the others' workdirs, so the runs differ in the filter alone.
Each run is a plain main.py process (one loop unless --num_loops, eval.split=validation,
the fine-tuned selectors left out); a rerun resumes it. Writes <root>/filter_ablation.json
and .md.
`--num_loops=2` continues the same runs with the config's own loops (round 1 and D_0 are
reused) and writes filter_ablation_2_loops.json/.md with the last loop's columns added:
its accuracy, its gain over loop 1 on the same queries, and what it writes.
Runtime on 2 CPU cores: about 25 min for tweet_emotion's D_0, 70 for ag_news', 35 for
boolq's, then 5-40 min per filter (all_right trains the most rows; boolq's queries are
passages). Measured: experiments/results/filter_ablation.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.bench_common import run_meta  # noqa: E402
from qpo_jax.diagnostics import is_new_text  # noqa: E402
from qpo_jax.report import interval_text, paired_bootstrap  # noqa: E402
from qpo_jax.utils import read_json, write_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"tweet_emotion": "configs/quickstart.py", "ag_news": "configs/nlu.py:task=ag_news",
           "boolq": "configs/nlu.py:task=boolq"}
FILTERS = {
    "advantage": {"offline.rank_by": "advantage"},
    "reward": {"offline.rank_by": "reward"},
    # every right row is kept whatever the ranking; it orders them, so it stays the one the
    # measured runs had (the recipe's ranking then)
    "all_right": {"offline.rank_by": "advantage", "offline.top_fraction": "1.0",
                  "train.epochs": "1"},
}
COMMON = {"eval.split": "validation", "eval.finetuned_baselines": "False", "progress": "False"}
# D_0 itself last: its presence marks a finished copy
D0_FILES = ("eval_cache.sqlite", "data/loop_0.config.json", "data/loop_0")
BASELINES = ("none", "best_train_prompt", "reward_model", "classifier_lookup", "oracle")

_ROOT = flags.DEFINE_string("root", "runs/filter_ablation", "directory of the runs")
_TASKS = flags.DEFINE_list("tasks", list(CONFIGS), f"tasks, of {list(CONFIGS)}")
_FILTERS = flags.DEFINE_list("filters", list(FILTERS), f"filters, of {list(FILTERS)}")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the commands only")
_ONLY_TABLE = flags.DEFINE_bool("only_table", False, "write the table from finished runs only")
_NUM_LOOPS = flags.DEFINE_integer("num_loops", 1, "loops per run; more continue the runs of fewer",
                                  lower_bound=1)


def workdir(root: str, task: str, name: str) -> str:
  return os.path.join(os.path.abspath(root), f"{task}_{name}")


def overrides(name: str, num_loops: int) -> dict[str, str]:
  """The config fields a filter's run sets."""
  return {"loop.num_loops": str(num_loops), **COMMON, **FILTERS[name]}


def command(root: str, task: str, name: str, num_loops: int) -> list[str]:
  """The main.py command line of one (task, filter) run."""
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={CONFIGS[task]}",
          f"--workdir={workdir(root, task, name)}"] + [
              f"--config.{k}={v}" for k, v in overrides(name, num_loops).items()]


def share_d0(source: str, dest: str) -> None:
  """Copies a finished D_0 and its result cache into a new run's workdir (never over one)."""
  if os.path.exists(os.path.join(dest, "data", "loop_0")):
    return
  for rel in D0_FILES:
    src, dst = os.path.join(source, rel), os.path.join(dest, rel)
    if not os.path.exists(src):
      raise FileNotFoundError(f"{src} is missing: {source}'s D_0 did not finish")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.rmtree(dst + ".partial", ignore_errors=True)  # left by an interrupted copy
    (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst + ".partial")
    os.replace(dst + ".partial", dst)


def run_all(root: str, tasks: list[str], names: list[str], num_loops: int) -> None:
  for task in tasks:
    for i, name in enumerate(names):
      if i:
        share_d0(workdir(root, task, names[0]), workdir(root, task, name))
      cmd = command(root, task, name, num_loops)
      print("+", " ".join(cmd), flush=True)
      if subprocess.run(cmd, cwd=ROOT, check=False).returncode:
        raise SystemExit(f"{task} / {name} failed; rerun to resume it")


def round_cost(result: dict, t: int) -> dict:
  """Round t's cost (reports before dacdfe9 named it train_<t>)."""
  cost = result["cost"]
  return cost[f"round_{t}"] if f"round_{t}" in cost else cost[f"train_{t}"]


def row(task: str, name: str, result: dict, num_loops: int) -> dict:
  """One table row: round 1 on validation, its routing and writing, the frozen selectors;
  with more loops, the last loop's accuracy, its gain over loop 1 and what it writes
  (`with_new_last`: its accuracy on the queries it gives a new text; `loop1_there`,
  `best_train_there`: loop 1's and the best train prompt's on those same queries).
  `same_at_r0` is the run's last loop's (the report measures R* there)."""
  methods = {m: v["zero_shot"] for m, v in result["methods"].items()}
  qpo, routing = "qpo_loop_1", result["routing"]["qpo_loop_1"]
  right = [q["correct"]["zero_shot"] for q in result["queries"]]

  def minus(a: str, b: str) -> str:  # the report's paired bootstrap (its configs' seed: 0)
    return interval_text(paired_bootstrap([r[a] for r in right], [r[b] for r in right], seed=0))

  out = {
      "task": task, "filter": name, "queries": result["num_test_queries"],
      **{m: methods[m] for m in BASELINES if m in methods}, "qpo": methods[qpo],
      "qpo_minus_best_train": minus(qpo, "best_train_prompt"),
      "qpo_minus_classifier": minus(qpo, "classifier_lookup"),
      "distinct": result["qpo_prompt_stats"]["1"]["distinct"],
      "label_forcing": routing["pure_fraction"], "follows_label": routing["follows_majority"],
      "new": result["writing"][qpo]["new_fraction"],
      "same_at_r0": result["return_sensitivity"]["by_return"]["0.0"]["same_prompt"],
      "minutes": round(round_cost(result, 1)["seconds"] / 60, 1),
  }
  if num_loops > 1:
    last = f"qpo_loop_{num_loops}"
    writing = result["writing"][last]
    sources = [s["prompt"] for s in result["source_prompts"]]
    new = [r for q, r in zip(result["queries"], right)
           if is_new_text(q["qpo"][str(num_loops)], sources)]

    def on_new(m: str) -> float | None:  # a method's accuracy on the queries given a new text
      return sum(r[m] for r in new) / len(new) if new else None

    out.update({
        "qpo_last": methods[last], "last_minus_loop1": minus(last, qpo),
        "last_minus_best_train": minus(last, "best_train_prompt"),
        "label_forcing_last": result["routing"][last]["pure_fraction"],
        "new_last": writing["new_fraction"], "with_new_last": writing["accuracy_with_new"],
        "with_pool_last": writing["accuracy_with_pool"],
        "loop1_there": on_new(qpo), "best_train_there": on_new("best_train_prompt"),
        "new_right_where_no_source_is": writing["new_right_where_no_source_is"],
        "minutes_total": round(result["cost"]["total"]["seconds"] / 60, 1),
    })
  return out


LAST_LOOP_COLUMNS = ["qpo_last", "last_minus_loop1", "last_minus_best_train",
                     "label_forcing_last", "new_last", "with_new_last", "loop1_there",
                     "best_train_there", "with_pool_last",
                     "new_right_where_no_source_is", "minutes_total"]


def table(root: str, tasks: list[str], names: list[str],
          num_loops: int = 1) -> tuple[str, list[str]]:
  """The runs' rows (a run that has not finished `num_loops` loops is listed as missing)."""
  rows, missing = [], []
  for task in tasks:
    for name in names:
      result = read_json(os.path.join(workdir(root, task, name), "eval", "results.json"))
      if result is None or f"qpo_loop_{num_loops}" not in result["methods"]:
        missing.append(f"{task}_{name}")
      else:
        rows.append(row(task, name, result, num_loops))
  columns = ["task", "filter", "queries", *BASELINES, "qpo", "qpo_minus_best_train",
             "qpo_minus_classifier", "distinct", "label_forcing", "follows_label", "new",
             "same_at_r0", "minutes"] + (LAST_LOOP_COLUMNS if num_loops > 1 else [])
  meta = run_meta(filters={n: overrides(n, num_loops) for n in names},
                  configs={t: CONFIGS[t] for t in tasks}, missing=missing)
  suffix = "" if num_loops == 1 else f"_{num_loops}_loops"
  out = os.path.join(root, f"filter_ablation{suffix}.json")
  return write_table(out, rows, columns, meta), missing


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  bad = sorted(set(_TASKS.value) - set(CONFIGS)) + sorted(set(_FILTERS.value) - set(FILTERS))
  if bad:
    raise app.UsageError(f"--tasks / --filters: unknown {bad}")
  root, tasks, names, num_loops = _ROOT.value, _TASKS.value, _FILTERS.value, _NUM_LOOPS.value
  if _DRY_RUN.value:
    for task in tasks:
      for name in names:
        print(" ".join(command(root, task, name, num_loops)))
    return
  if not _ONLY_TABLE.value:
    run_all(root, tasks, names, num_loops)
  markdown, missing = table(root, tasks, names, num_loops)
  print(markdown)
  if missing:
    print(f"not finished: {missing}")


if __name__ == "__main__":
  app.run(main)
