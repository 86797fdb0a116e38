"""The paper-table scripts: their runs are real paper settings, and tables assemble from results."""

import json
import os
import subprocess
import sys

import pytest

from experiments import paper_tables as tables
from tests.conftest import one_device_env

from tests.helpers import ROOT, SHARED_DATA
SCRIPTS = {name: os.path.join(ROOT, "experiments", f"table_{name}.py") for name in tables.TABLES}


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_script_dry_run_lists_paper_settings(name, tmp_path):
  doc = open(SCRIPTS[name]).read()
  assert "Hardware:" in doc and "Runtime:" in doc
  r = subprocess.run([sys.executable, SCRIPTS[name], f"--root={tmp_path}", "--dry_run",
                      "--override=policy.path=/ckpt/gpt2"], capture_output=True, text=True,
                     cwd=ROOT, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  table = tables.TABLES[name]
  assert len(lines) == len(table.settings(table.tasks)) > 0
  for line, setting in zip(lines, table.settings(table.tasks)):
    assert f"configs/paper.py:{setting} " in line and "--config.policy.path=/ckpt/gpt2" in line
    assert f"--workdir={tables.workdir(str(tmp_path), setting)}" in line
    for k, v in table.overrides.items():
      assert f"--config.{k}={v}" in line
  tables.check_settings(table.settings(table.tasks))  # each one is a paper.py setting


@pytest.mark.multiprocess
def test_bad_flags_fail_clearly(tmp_path):
  r = subprocess.run([sys.executable, SCRIPTS["math"], f"--root={tmp_path}", "--dry_run",
                      "--tasks=gsm8k,mnist"], capture_output=True, text=True, cwd=ROOT)
  assert r.returncode != 0 and "['mnist'] are not in this table's tasks" in r.stderr
  with pytest.raises(ValueError, match="'policy.path' is not key=value"):
    tables.parse_overrides(["policy.path"])


@pytest.fixture
def tiny_result(tiny_run):
  """results.json of a real (tiny) QPO run: what every paper run writes."""
  return os.path.join(tiny_run[0], "eval", "results.json")


def _place(root, setting, results_path, scale=1.0):
  """Puts a run's results where the setting's run would write them (accuracies scaled)."""
  result = json.load(open(results_path))
  result["methods"] = {m: {s: v * scale for s, v in accs.items()}
                       for m, accs in result["methods"].items()}
  os.makedirs(os.path.join(tables.workdir(root, setting), "eval"))
  with open(os.path.join(tables.workdir(root, setting), "eval", "results.json"), "w") as f:
    json.dump(result, f)
  return result


@pytest.mark.integration
def test_tables_assemble_from_run_results(tiny_result, tmp_path):
  root = str(tmp_path / "runs")
  a = _place(root, "ag_news,zero_shot,llama-2-7b-chat", tiny_result, 1.0)
  b = _place(root, "tweet_emotion,zero_shot,llama-2-7b-chat", tiny_result, 0.5)
  out = str(tmp_path / "t.json")
  md, missing = tables.assemble("nlu_zero_shot", root, ["ag_news", "tweet_emotion", "imdb"], out)
  assert missing == ["imdb,zero_shot,llama-2-7b-chat"] and "Not run yet (1)" in md
  rows = {r["method"]: r for r in json.load(open(out))["rows"]}
  assert os.path.exists(str(tmp_path / "t.md"))
  qpo = a["methods"]["qpo_loop_2"]["zero_shot"]
  assert rows["QPO loop 2"]["ag_news"] == qpo and rows["QPO loop 2"]["tweet_emotion"] == qpo / 2
  assert rows["QPO loop 2"]["imdb"] == tables.MISSING and rows["QPO loop 2"]["mean"] == "-"
  assert {"no instruction", "manual", "best source prompt, chosen on train",
          "reward model best-of-N (Prompt-OIRL-style)"} <= set(rows)
  assert any(m.startswith("source: ") and "(mean of" not in m for m in rows)
  md, missing = tables.assemble("nlu_zero_shot", root, ["ag_news", "tweet_emotion"], out)
  rows = {r["method"]: r for r in json.load(open(out))["rows"]}
  assert not missing and rows["manual"]["mean"] == pytest.approx(
      0.75 * a["methods"]["manual"]["zero_shot"])

  md, _ = tables.assemble("loop_ablation", root, ["ag_news", "tweet_emotion"], out)
  rows = json.load(open(out))["rows"]
  assert [r["task"] for r in rows] == ["ag_news", "tweet_emotion"]
  assert rows[1]["loop 1"] == b["methods"]["qpo_loop_1"]["zero_shot"] and "loop 2" in rows[1]

  md, missing = tables.assemble("cost", root, ["ag_news"], out)
  assert missing == ["ag_news,few_shot,llama-2-7b-chat"]
  rows = {r["setting"]: r for r in json.load(open(out))["rows"]}
  got = rows["ag_news,zero_shot,llama-2-7b-chat"]
  assert got["D_0 calls (0 if imported)"] == a["cost"]["d0"]["calls"] > 0
  assert got["loop collection calls"] == a["cost"]["collect_1"]["calls"] + \
      a["cost"]["collect_2"]["calls"] > 0
  assert got["QPO calls / test query"] == 1
  assert got["trying all N source prompts: calls / test query"] == a["num_source_prompts"] > 1
  assert rows["ag_news,few_shot,llama-2-7b-chat"]["loop collection calls"] == tables.MISSING


@pytest.mark.multiprocess
@pytest.mark.skipif(not os.path.isdir(SHARED_DATA),
                    reason="../shared/data (InstructEval prompts) not present")
def test_table_script_runs_a_paper_setting_end_to_end(tmp_path, smollm2_tokenizer):
  """nlu_zero_shot on TweetEval with the real InstructEval prompts, tiny random models on CPU."""
  tok_dir = str(tmp_path / "tokenizer")
  smollm2_tokenizer.save_pretrained(tok_dir)
  small = {
      "target.name": "random", "target.preset": "tiny-llama", "target.tokenizer_path": tok_dir,
      "target.dtype": "float32", "target.param_dtype": "float32", "target.local.batch_size": "8",
      "target.local.length_multiple": "16", "policy.name": "random", "policy.preset": "tiny-llama",
      "policy.tokenizer_path": tok_dir, "offline.num_queries": "6",
      "offline.prompt_sources": "('manual', 'generic_instruction')", "train.epochs": "2",
      "train.finetune_epochs": "1", "train.batch_size": "8", "train.query_len": "16",
      "train.prompt_len": "48", "progress": "False", "sample.batch_size": "8",
      "loop.num_loops": "1", "loop.collect_batches": "1", "loop.collect_queries": "8",
      "eval.num_queries": "8",
      # a random target answers nothing right: keep every record for training
      "offline.threshold": "-100.0", "offline.top_fraction": "1.0"}
  root = str(tmp_path / "runs")
  r = subprocess.run([sys.executable, SCRIPTS["nlu_zero_shot"], f"--root={root}",
                      "--tasks=tweet_emotion"] + [f"--override={k}={v}" for k, v in small.items()],
                     capture_output=True, text=True, cwd=ROOT, timeout=1200, env=one_device_env())
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  table = json.load(open(os.path.join(root, "tables", "nlu_zero_shot.json")))
  assert table["meta"]["missing"] == [] and table["meta"]["test_queries"] == {
      "tweet_emotion,zero_shot,llama-2-7b-chat": 8}
  rows = {row["method"]: row for row in table["rows"]}
  assert {"QPO loop 1", "manual", "source: manual", "source: generic_instruction"} <= set(rows)
  assert all(0.0 <= row["tweet_emotion"] <= 1.0 for row in rows.values())
  assert "| QPO loop 1 |" in r.stdout
