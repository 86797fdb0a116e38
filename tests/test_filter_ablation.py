"""experiments/filter_ablation.py: its runs are real configs with the filter applied, runs
share one D_0, and its table is the runs' own figures."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from experiments import filter_ablation as fa
from tests.helpers import ROOT, parse_config

SCRIPT = os.path.join(ROOT, "experiments", "filter_ablation.py")


@pytest.mark.parametrize("task", sorted(fa.CONFIGS))
@pytest.mark.parametrize("name", sorted(fa.FILTERS))
@pytest.mark.parametrize("num_loops", [1, 2])
def test_each_command_parses_to_its_filter(task, name, num_loops, tmp_path):
  cmd = fa.command(str(tmp_path), task, name, num_loops)
  assert cmd[1] == os.path.join(ROOT, "main.py")
  assert f"--workdir={tmp_path}/{task}_{name}" in cmd
  config = parse_config(*[a for a in cmd[2:] if not a.startswith("--workdir")])
  assert config.task.name == task and config.loop.num_loops == num_loops
  assert config.eval.split == "validation" and not config.eval.finetuned_baselines
  expected = {"advantage": ("advantage", 0.05, 3), "reward": ("reward", 0.05, 3),
              "all_right": ("advantage", 1.0, 1)}[name]
  assert (config.offline.rank_by, config.offline.top_fraction, config.train.epochs) == expected


@pytest.mark.multiprocess
def test_dry_run_and_bad_flags(tmp_path):
  r = subprocess.run([sys.executable, SCRIPT, f"--root={tmp_path}", "--dry_run",
                      "--tasks=boolq", "--filters=advantage,all_right"],
                     capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 2 and "--config.offline.top_fraction=1.0" in lines[1]
  r = subprocess.run([sys.executable, SCRIPT, f"--root={tmp_path}", "--dry_run",
                      "--filters=advantage,best"], capture_output=True, text=True, cwd=ROOT,
                     timeout=300)
  assert r.returncode != 0 and "unknown ['best']" in r.stderr


def test_share_d0_copies_once_and_names_a_missing_source(tmp_path):
  src, dst = tmp_path / "a", tmp_path / "b"
  (src / "data" / "loop_0").mkdir(parents=True)
  (src / "data" / "loop_0" / "shard").write_text("records")
  (src / "data" / "loop_0.config.json").write_text("{}")
  (src / "eval_cache.sqlite").write_text("cache")
  fa.share_d0(str(src), str(dst))
  assert (dst / "data" / "loop_0" / "shard").read_text() == "records"
  assert (dst / "eval_cache.sqlite").read_text() == "cache"
  (dst / "eval_cache.sqlite").write_text("grown")  # the run's own cache is never replaced
  fa.share_d0(str(src), str(dst))
  assert (dst / "eval_cache.sqlite").read_text() == "grown"
  (tmp_path / "c" / "data" / "loop_0.partial").mkdir(parents=True)  # an interrupted copy
  fa.share_d0(str(src), str(tmp_path / "c"))
  assert (tmp_path / "c" / "data" / "loop_0" / "shard").exists()
  assert not list(tmp_path.glob("c/**/*.partial"))
  shutil.rmtree(src / "data" / "loop_0")
  with pytest.raises(FileNotFoundError, match="loop_0 is missing"):
    fa.share_d0(str(src), str(tmp_path / "d"))
  assert not (tmp_path / "d" / "data" / "loop_0").exists()


@pytest.mark.integration
def test_table_is_the_runs_figures(tiny_run, tmp_path):
  result = json.load(open(os.path.join(tiny_run[0], "eval", "results.json")))
  root = str(tmp_path)
  run = fa.workdir(root, "boolq", "all_right")
  os.makedirs(os.path.join(run, "eval"))
  shutil.copy(os.path.join(tiny_run[0], "eval", "results.json"), os.path.join(run, "eval"))
  markdown, missing = fa.table(root, ["boolq"], ["advantage", "all_right"])
  assert missing == ["boolq_advantage"]
  rows = json.load(open(os.path.join(root, "filter_ablation.json")))["rows"]
  assert len(rows) == 1 and rows[0]["filter"] == "all_right"
  assert rows[0]["qpo"] == result["methods"]["qpo_loop_1"]["zero_shot"]
  assert rows[0]["label_forcing"] == result["routing"]["qpo_loop_1"]["pure_fraction"]
  assert rows[0]["best_train_prompt"] == result["methods"]["best_train_prompt"]["zero_shot"]
  assert "| boolq | all_right |" in markdown


@pytest.mark.integration
def test_table_of_more_loops_adds_the_last_loop(tiny_run, tmp_path):
  """Two loops: loop 1's columns stay loop 1's (the report's comparisons are the last
  loop's), and the last loop's accuracy, gain and writing are added; a run with fewer
  loops is not finished."""
  result = json.load(open(os.path.join(tiny_run[0], "eval", "results.json")))
  root = str(tmp_path)
  run = fa.workdir(root, "boolq", "reward")
  os.makedirs(os.path.join(run, "eval"))
  shutil.copy(os.path.join(tiny_run[0], "eval", "results.json"), os.path.join(run, "eval"))
  _, missing = fa.table(root, ["boolq"], ["reward"], num_loops=3)
  assert missing == ["boolq_reward"]
  fa.table(root, ["boolq"], ["reward"], num_loops=2)
  saved = json.load(open(os.path.join(root, "filter_ablation_2_loops.json")))
  (one,) = saved["rows"]
  assert saved["meta"]["filters"]["reward"]["loop.num_loops"] == "2"
  right = [q["correct"]["zero_shot"] for q in result["queries"]]
  loop1 = [r["qpo_loop_1"] - r["best_train_prompt"] for r in right]
  assert one["qpo_minus_best_train"].startswith(f"{sum(loop1) / len(loop1):+.3f} [")
  assert one["qpo"] == result["methods"]["qpo_loop_1"]["zero_shot"]
  assert one["qpo_last"] == result["methods"]["qpo_loop_2"]["zero_shot"]
  gain = [r["qpo_loop_2"] - r["qpo_loop_1"] for r in right]
  assert one["last_minus_loop1"].startswith(f"{sum(gain) / len(gain):+.3f} [")
  assert one["last_minus_best_train"] == fa.interval_text(result["qpo_vs_best_train"]["zero_shot"])
  assert one["new_last"] == result["writing"]["qpo_loop_2"]["new_fraction"]
  assert one["label_forcing_last"] == result["routing"]["qpo_loop_2"]["pure_fraction"]
  sources = {s["prompt"] for s in result["source_prompts"]}
  there = [r["qpo_loop_1"] for q, r in zip(result["queries"], right)
           if q["qpo"]["2"] not in sources]  # the tiny policy's texts are not fragments
  assert there and one["loop1_there"] == pytest.approx(sum(there) / len(there))
