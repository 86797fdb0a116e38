"""experiments/compare_optimizers.py end to end on the tiny config: a QPO run, then DSPy's
MIPROv2 and GEPA (light) through serve_target with a random 4k-context target on loopback;
the calls the script reports equal the requests the server's access log shows."""

import json
import subprocess
import sys

import pytest

from tests.conftest import one_device_env

from tests.helpers import ROOT
TINY = ["--config=configs/tiny.py"]
SET = "target.preset=tiny-llama-4k"  # DSPy's proposer prompts do not fit 256 tokens


def _answered_posts(log_path: str) -> int:
  with open(log_path) as f:
    return sum('"POST /v1/' in line and '" 200 ' in line for line in f)


@pytest.mark.multiprocess
def test_peers_beside_qpo_with_server_counted_calls(tmp_path):
  qpo = tmp_path / "qpo"
  r = subprocess.run([sys.executable, "main.py", *TINY, f"--workdir={qpo}",
                      f"--config.{SET}", "--config.progress=False"], cwd=ROOT,
                     env=one_device_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  peers, out = tmp_path / "peers", tmp_path / "table.json"
  argv = [sys.executable, "experiments/compare_optimizers.py", *TINY, f"--set={SET}",
          f"--qpo_workdir={qpo}", f"--workdir={peers}", f"--out={out}",
          "--peers=mipro_light,gepa_light", "--max_tokens=16", "--num_threads=2"]
  r = subprocess.run(argv, cwd=ROOT, env=one_device_env(), capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  table = json.loads(out.read_text())
  rows = {row["method"]: row for row in table["rows"]}
  assert set(rows) == {"QPO loop 1", "QPO loop 2", "manual instruction", "MIPROv2 light",
                       "GEPA light"}
  report = json.loads((qpo / "eval" / "results.json").read_text())
  for t in (1, 2):  # one evaluator: QPO's prompts scored by the script give its report's figure
    q = rows[f"QPO loop {t}"]
    assert q["accuracy_here"] == pytest.approx(q["accuracy"])
    assert q["accuracy"] == report["methods"][f"qpo_loop_{t}"]["zero_shot"]
    assert q["offline_calls"] == report["cost"]["d0"]["calls"] > 0
  assert rows["QPO loop 2"]["online_calls"] == report["cost"]["collect_1"]["calls"]
  sent = 0
  for name in ("MIPROv2 light", "GEPA light"):
    p = rows[name]
    c = p["calls"]
    assert c["requests"] == c["generation_requests"] + c["scoring_requests"] > 0
    assert p["online_calls"] == c["requests"] and not p["resumed"]
    assert p["test_calls"]["requests"] == table["meta"]["test_queries"] == 8
    assert 0.0 <= p["accuracy"] <= 1.0 and 0.0 <= p["dspy_metric"] <= 1.0
    assert isinstance(p["instruction"], str)
    assert p["qpo_minus"][0] in "+-" and "[" in p["qpo_minus"]  # QPO's last loop minus the peer
    sent += c["requests"] + p["test_calls"]["requests"]
  assert sent == _answered_posts(peers / "serve_target.log")  # counted by the server = reported
  assert sent < 2000  # bounded: the light budgets on 2 + 6 train queries
  assert (tmp_path / "table.md").exists() and (tmp_path / "table.png").stat().st_size > 0

  # a rerun takes each finished peer from the workdir: no request reaches the server
  r = subprocess.run(argv, cwd=ROOT, env=one_device_env(), capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert _answered_posts(peers / "serve_target.log") == 0
  again = {row["method"]: row for row in json.loads(out.read_text())["rows"]}
  assert again["GEPA light"]["accuracy"] == rows["GEPA light"]["accuracy"]


@pytest.mark.multiprocess
def test_the_script_refuses_a_run_of_another_config(tmp_path):
  qpo = tmp_path / "qpo" / "eval"
  qpo.mkdir(parents=True)
  (qpo / "results.json").write_text(json.dumps({"queries": [{"uid": "nope"}]}))
  r = subprocess.run([sys.executable, "experiments/compare_optimizers.py", *TINY,
                      f"--qpo_workdir={tmp_path / 'qpo'}", f"--workdir={tmp_path / 'p'}"],
                     cwd=ROOT, env=one_device_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and "does not give the test queries of" in r.stderr
