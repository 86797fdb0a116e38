"""The paper's tables from QPO runs: the settings each table needs, and the table from results.

A table is a list of `configs/paper.py` settings plus a way to lay their
`<root>/<setting>/eval/results.json` out as rows. The scripts in experiments/
run the settings through `main.py` (one process per setting: each resumes on
its own, and a 70B target's memory is freed before the next) and then call
`assemble`, which also works on partial results: a setting that has not run
yet shows as "-" and is listed as missing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from typing import Any, Callable, Mapping, Sequence

from qpo_jax.report import label as report_label
from qpo_jax.utils import config_module, load_config, read_json, write_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIG = os.path.join(ROOT, "configs", "paper.py")
_PAPER = config_module(PAPER_CONFIG)  # tasks and targets as the config names them
NLU, MATH = tuple(_PAPER.NLU), tuple(_PAPER.MATH)
SCALES = tuple(_PAPER.LOCAL_TARGETS)  # Llama-2-chat 7B, 13B, 70B
MATH_TARGETS = tuple(_PAPER.API_TARGETS) + ("llama-2-7b-chat",)
MISSING = "-"


@dataclasses.dataclass(frozen=True)
class Table:
  """Which runs a table needs, the config overrides they share, and how rows are made."""

  title: str
  settings: Callable[[Sequence[str]], list[str]]  # tasks -> paper settings
  tasks: Sequence[str]
  rows: Callable[[Mapping[str, Any], Sequence[str]], tuple[list[dict[str, Any]], list[str]]]
  overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)


def workdir(root: str, setting: str) -> str:
  """A setting's run directory (absolute: the runs start in the repository root)."""
  return os.path.join(os.path.abspath(root), setting.replace(",", "_"))


def command(setting: str, root: str, overrides: Mapping[str, str]) -> list[str]:
  """The main.py command line that runs (or resumes) one paper setting."""
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={PAPER_CONFIG}:{setting}",
          f"--workdir={workdir(root, setting)}"] + [f"--config.{k}={v}"
                                                     for k, v in overrides.items()]


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
  """'loop.num_loops=5' items (a --override flag) to a dict; bad items name themselves."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
      raise ValueError(f"--override {item!r} is not key=value (e.g. loop.num_loops=5)")
    out[key] = value
  return out


def check_settings(settings: Sequence[str]) -> None:
  """Fails before any run if a setting is not one of configs/paper.py's."""
  for s in settings:
    load_config(f"{PAPER_CONFIG}:{s}")


def run_settings(settings: Sequence[str], root: str, overrides: Mapping[str, str]
                 ) -> dict[str, int]:
  """Runs each setting's main.py in turn; returns the exit code per setting (0 = done)."""
  codes = {}
  for s in settings:
    cmd = command(s, root, overrides)
    print("+", " ".join(cmd), flush=True)
    codes[s] = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if codes[s]:
      print(f"setting {s} failed with exit code {codes[s]}; its column stays empty", flush=True)
  return codes


def load_results(root: str, settings: Sequence[str]) -> dict[str, dict[str, Any]]:
  """results.json of every setting that finished, by setting."""
  out = {}
  for s in settings:
    result = read_json(os.path.join(workdir(root, s), "eval", "results.json"))
    if result is not None:
      out[s] = result
  return out


def _accuracy_rows(results: Mapping[str, Any], columns: Sequence[tuple[str, str, str]]
                   ) -> tuple[list[dict[str, Any]], list[str]]:
  """Methods x columns; a column is (label, paper setting, evaluation setting)."""
  methods: dict[str, None] = {}
  values: dict[tuple[str, str], float] = {}
  for label, setting, ev in columns:
    for method, accs in results.get(setting, {}).get("methods", {}).items():
      methods.setdefault(method)
      if ev in accs:
        values[method, label] = accs[ev]
  labels = [c[0] for c in columns]
  rows = []
  for m in methods:
    row: dict[str, Any] = {"method": report_label(m)}
    got = [values[m, label] for label in labels if (m, label) in values]
    for label in labels:
      row[label] = values.get((m, label), MISSING)
    row["mean"] = sum(got) / len(got) if got and len(got) == len(labels) else MISSING
    rows.append(row)
  return rows, ["method", *labels, "mean"]


def _by_task(setting: str, target: str = "llama-2-7b-chat"):
  def settings(tasks):
    return [f"{t},{setting},{target}" for t in tasks]

  def rows(results, tasks):
    return _accuracy_rows(results, [(t, f"{t},{setting},{target}", setting) for t in tasks])
  return settings, rows


def _math_settings(tasks):
  return [f"{t},zero_shot,{m}" for t in tasks for m in MATH_TARGETS]


def _math_rows(results, tasks):
  return _accuracy_rows(results, [(f"{t} / {m}", f"{t},zero_shot,{m}", "zero_shot")
                                  for t in tasks for m in MATH_TARGETS])


def _scale_settings(tasks):
  return [f"{t},zero_shot,{m}" for t in tasks for m in SCALES]


def _scale_rows(results, tasks):
  return _accuracy_rows(results, [(f"{t} / {m.split('-')[2]}", f"{t},zero_shot,{m}", "zero_shot")
                                  for t in tasks for m in SCALES])


def _loop_rows(results, tasks):
  """Per task: QPO after each loop, against the best source prompt chosen on train."""
  rows, loops = [], 0
  for t in tasks:
    methods = results.get(f"{t},zero_shot,llama-2-7b-chat", {}).get("methods", {})
    qpo = {int(k.rsplit("_", 1)[1]): v["zero_shot"] for k, v in methods.items()
           if k.startswith("qpo_loop_")}
    loops = max(loops, *qpo) if qpo else loops
    best = methods.get("best_train_prompt", {}).get("zero_shot", MISSING)
    rows.append({"task": t, "best source prompt (train)": best,
                 **{f"loop {i}": v for i, v in sorted(qpo.items())}})
  columns = ["task", "best source prompt (train)"] + [f"loop {i}" for i in range(1, loops + 1)]
  return [{c: r.get(c, MISSING) for c in columns} for r in rows], columns


def _cost_settings(tasks):
  return ([f"{t},{s},llama-2-7b-chat" for t in tasks if t in NLU
           for s in ("zero_shot", "few_shot")]
          + [f"{t},zero_shot,gpt-3.5-turbo" for t in tasks if t in MATH])


def _cost_rows(results, tasks):
  """Target usage per stage, and calls per test query: QPO's one prompt vs every source prompt."""
  columns = ["setting", "D_0 calls (0 if imported)", "loop collection calls",
             "loop collection tokens", "QPO calls / test query",
             "trying all N source prompts: calls / test query"]
  rows = []
  for s in _cost_settings(tasks):
    r = results.get(s, {})
    per_pair = r.get("calls_per_pair", {}).get(s.split(",")[1])
    if per_pair is None:  # not run, or a report from before these fields existed
      rows.append({"setting": s, **{c: MISSING for c in columns[1:]}})
      continue
    collect = [v for k, v in r["cost"].items() if k.startswith("collect_")]
    rows.append(dict(zip(columns, [
        s, r["cost"].get("d0", {}).get("calls", 0), sum(c["calls"] for c in collect),
        sum(c["prompt_tokens"] + c["generated_tokens"] for c in collect), per_pair,
        per_pair * r["num_source_prompts"]])))
  return rows, columns


def _nlu(setting):
  settings, rows = _by_task(setting)
  return dict(settings=settings, rows=rows, tasks=NLU)


TABLES: dict[str, Table] = {
    "nlu_zero_shot": Table("NLU tasks, zero-shot, Llama-2-7B-chat target", **_nlu("zero_shot")),
    "nlu_few_shot": Table("NLU tasks, few-shot (10 demo sets x 6 demos), Llama-2-7B-chat target",
                          **_nlu("few_shot")),
    "math": Table("Math reasoning, zero-shot: GPT-3.5-turbo, GPT-4o and Llama-2-7B-chat targets",
                  _math_settings, MATH, _math_rows),
    "target_scale": Table("Target scale, zero-shot: Llama-2-chat 7B / 13B / 70B",
                          _scale_settings, NLU, _scale_rows),
    "loop_ablation": Table("Number of loops: QPO after each of 5 loops, zero-shot, Llama-2-7B",
                           _by_task("zero_shot")[0], NLU, _loop_rows,
                           overrides={"loop.num_loops": "5"}),
    "cost": Table("Cost: target LLM usage per stage, and calls per test query",
                  _cost_settings, NLU + MATH, _cost_rows),
}


def assemble(name: str, root: str, tasks: Sequence[str], out: str) -> tuple[str, list[str]]:
  """(Markdown of table `name` from the runs under `root`, settings still missing); writes `out`."""
  table = TABLES[name]
  settings = table.settings(tasks)
  results = load_results(root, settings)
  rows, columns = table.rows(results, tasks)
  missing = [s for s in settings if s not in results]
  meta = {"table": name, "title": table.title, "root": os.path.abspath(root),
          "settings": settings, "missing": missing, "overrides": dict(table.overrides),
          "targets": {s: r["target"] for s, r in results.items()},
          "test_queries": {s: r["num_test_queries"] for s, r in results.items()}}
  markdown = f"## {table.title}\n\n" + write_table(out, rows, columns, meta)
  if missing:
    markdown += f"\nNot run yet ({len(missing)}): {', '.join(missing)}\n"
  return markdown, missing
