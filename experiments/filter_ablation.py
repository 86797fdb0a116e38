"""Which rows round 1 learns from, across tasks: the recipe's expert filter against two others.

  QPO_DATA=/path/to/data python experiments/filter_ablation.py --root=/tmp/qpo_filters \
      [--tasks=tweet_emotion,boolq] [--filters=recipe,all_right] [--dry_run]

Round 1 of QPO is trained from one D_0 per task under each filter and its greedy prompts
are scored on the task's *validation* split (never in D_0, never collected; the test split
is not read), beside the report's frozen selectors and the best train prompt:
  recipe     offline.rank_by=advantage, top_fraction=0.05: each query's one right prompt
             that is most specific to it (the quickstart's recipe), 3 epochs
  reward     rank_by=reward, top_fraction=0.05: the spec's ranking, 3 epochs
  all_right  top_fraction=1.0: every prompt that was right on the query (8-16 rows per
             query on these tasks), 1 epoch: already more steps than the others' 3
The filter decides what the policy can learn: one row per query teaches it which prompt
goes with which query (routing), all right rows teach it which prompts are right most
often. Tasks: tweet_emotion (configs/quickstart.py), ag_news and boolq (configs/nlu.py,
which read $QPO_DATA). D_0 is built by the first filter's run and copied, with its
result cache, into the others' workdirs, so the runs differ in the filter alone.
Each run is a plain main.py process (one loop, eval.split=validation, the fine-tuned
selectors left out); a rerun resumes it. Writes <root>/filter_ablation.json and .md.
Runtime on 2 CPU cores: about 25 min for tweet_emotion's D_0, 70 for ag_news', 35 for
boolq's, then 5-40 min per filter (all_right trains the most rows; boolq's queries are
passages). Measured: experiments/results/filter_ablation.md.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.bench_common import git_commit  # noqa: E402
from qpo_jax.report import interval_text  # noqa: E402
from qpo_jax.utils import read_json, write_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"tweet_emotion": "configs/quickstart.py", "ag_news": "configs/nlu.py:task=ag_news",
           "boolq": "configs/nlu.py:task=boolq"}
FILTERS = {
    "recipe": {},
    "reward": {"offline.rank_by": "reward"},
    "all_right": {"offline.top_fraction": "1.0", "train.epochs": "1"},
}
COMMON = {"loop.num_loops": "1", "eval.split": "validation",
          "eval.finetuned_baselines": "False", "progress": "False"}
# D_0 itself last: its presence marks a finished copy
D0_FILES = ("eval_cache.sqlite", "data/loop_0.config.json", "data/loop_0")
BASELINES = ("none", "best_train_prompt", "reward_model", "classifier_lookup", "oracle")

_ROOT = flags.DEFINE_string("root", "runs/filter_ablation", "directory of the runs")
_TASKS = flags.DEFINE_list("tasks", list(CONFIGS), f"tasks, of {list(CONFIGS)}")
_FILTERS = flags.DEFINE_list("filters", list(FILTERS), f"filters, of {list(FILTERS)}")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the commands only")
_ONLY_TABLE = flags.DEFINE_bool("only_table", False, "write the table from finished runs only")


def workdir(root: str, task: str, name: str) -> str:
  return os.path.join(os.path.abspath(root), f"{task}_{name}")


def overrides(name: str) -> dict[str, str]:
  """The config fields a filter's run sets."""
  return {**COMMON, **FILTERS[name]}


def command(root: str, task: str, name: str) -> list[str]:
  """The main.py command line of one (task, filter) run."""
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={CONFIGS[task]}",
          f"--workdir={workdir(root, task, name)}"] + [f"--config.{k}={v}"
                                                       for k, v in overrides(name).items()]


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


def run_all(root: str, tasks: list[str], names: list[str]) -> None:
  for task in tasks:
    for i, name in enumerate(names):
      if i:
        share_d0(workdir(root, task, names[0]), workdir(root, task, name))
      cmd = command(root, task, name)
      print("+", " ".join(cmd), flush=True)
      if subprocess.run(cmd, cwd=ROOT, check=False).returncode:
        raise SystemExit(f"{task} / {name} failed; rerun to resume it")


def row(task: str, name: str, result: dict) -> dict:
  """One table row: round 1 on validation, its routing and writing, the frozen selectors."""
  methods = {m: v["zero_shot"] for m, v in result["methods"].items()}
  qpo, routing = "qpo_loop_1", result["routing"]["qpo_loop_1"]
  return {
      "task": task, "filter": name, "queries": result["num_test_queries"],
      **{m: methods[m] for m in BASELINES if m in methods}, "qpo": methods[qpo],
      "qpo_minus_best_train": interval_text(result["qpo_vs_best_train"]["zero_shot"]),
      "qpo_minus_classifier": interval_text(result["qpo_vs_classifier_lookup"]["zero_shot"]),
      "distinct": result["qpo_prompt_stats"]["1"]["distinct"],
      "label_forcing": routing["pure_fraction"], "follows_label": routing["follows_majority"],
      "new": result["writing"][qpo]["new_fraction"],
      "same_at_r0": result["return_sensitivity"]["by_return"]["0.0"]["same_prompt"],
      "minutes": round(result["cost"]["round_1"]["seconds"] / 60, 1),
  }


def table(root: str, tasks: list[str], names: list[str]) -> tuple[str, list[str]]:
  rows, missing = [], []
  for task in tasks:
    for name in names:
      result = read_json(os.path.join(workdir(root, task, name), "eval", "results.json"))
      if result is None:
        missing.append(f"{task}_{name}")
      else:
        rows.append(row(task, name, result))
  columns = ["task", "filter", "queries", *BASELINES, "qpo", "qpo_minus_best_train",
             "qpo_minus_classifier", "distinct", "label_forcing", "follows_label", "new",
             "same_at_r0", "minutes"]
  meta = {"date": datetime.date.today().isoformat(), "commit": git_commit(),
          "filters": {n: overrides(n) for n in names},
          "configs": {t: CONFIGS[t] for t in tasks}, "missing": missing}
  out = os.path.join(root, "filter_ablation.json")
  return write_table(out, rows, columns, meta), missing


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  bad = sorted(set(_TASKS.value) - set(CONFIGS)) + sorted(set(_FILTERS.value) - set(FILTERS))
  if bad:
    raise app.UsageError(f"--tasks / --filters: unknown {bad}")
  root, tasks, names = _ROOT.value, _TASKS.value, _FILTERS.value
  if _DRY_RUN.value:
    for task in tasks:
      for name in names:
        print(" ".join(command(root, task, name)))
    return
  if not _ONLY_TABLE.value:
    run_all(root, tasks, names)
  markdown, missing = table(root, tasks, names)
  print(markdown)
  if missing:
    print(f"not finished: {missing}")


if __name__ == "__main__":
  app.run(main)
