"""serve_policy's speed: requests/s and p50/p95 latency, one client and 4 at once.

The proxy runs in this process on 127.0.0.1 with the quickstart's policy and target
(SmolLM2-135M for both; with --workdir, that run's last trained round, else the
pretrained LM with fresh heads: the same work per request). Each request is a
different TweetEval test tweet. Two routes: /v1/optimize (the policy's prompt) and
/v1/chat/completions (prompt, then the target's label). Each is timed as it is now
and, in the same run, with every decode padded to the full sampling batch, as the
proxy did before (one request's single row decoded as 32).

  .venv/bin/python experiments/bench_proxy.py --out experiments/results/proxy.json
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
import urllib.request

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import bench_common  # noqa: E402
from qpo_jax import decoding  # noqa: E402
from qpo_jax import rounds  # noqa: E402
from qpo_jax.context import Run  # noqa: E402
from qpo_jax.policy.sampling import PromptSampler  # noqa: E402
from qpo_jax.policy.serve import PolicyServer  # noqa: E402
from qpo_jax.policy.settings import SampleSettings  # noqa: E402
from qpo_jax.targets.server import make_server, serve_in_thread  # noqa: E402
from qpo_jax.utils import load_config, show_progress, write_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = flags.DEFINE_string("config", os.path.join(ROOT, "configs", "quickstart.py"), "Config.")
_WORKDIR = flags.DEFINE_string("workdir", "", "A finished run whose last round to serve.")
_REQUESTS = flags.DEFINE_integer("requests", 16, "Requests per route and mode.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 4, "Clients at once in the concurrent mode.")
_OUT = flags.DEFINE_string("out", "", "Write the table here (.json and .md).")


def _post(port: int, path: str, body: dict) -> float:
  start = time.perf_counter()
  req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=600) as resp:
    json.loads(resp.read())
  return time.perf_counter() - start


def _body(path: str, tweet: str) -> dict:
  if path == "/v1/optimize":
    return {"query": tweet}
  return {"messages": [{"role": "user", "content": tweet}]}


def _run(port: int, path: str, tweets: list[str], clients: int) -> dict[str, float]:
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    latencies = list(pool.map(lambda t: _post(port, path, _body(path, t)), tweets))
  wall = time.perf_counter() - start
  return {"requests/s": len(tweets) / wall, "p50 s": float(np.percentile(latencies, 50)),
          "p95 s": float(np.percentile(latencies, 95))}


def main(argv):
  del argv
  show_progress(False)
  config = load_config(_CONFIG.value)
  run = Run(config, _WORKDIR.value)
  if _WORKDIR.value:
    sampler = rounds.prompt_sampler(run, 0)
  else:
    cfg, params, tok = run.pretrained_policy()
    sampler = PromptSampler(cfg, params, tok, SampleSettings.of(config.sample),
                                   config.train.query_len, config.train.prompt_len, round=0)
  tweets = [ex.query for ex in run.splits["test"]]
  server = make_server(PolicyServer(sampler, run.task, run.target, "qpo"))
  serve_in_thread(server)
  port = server.server_address[1]
  rows = []
  exact = decoding.batch_rows
  used = 0
  for padding in ("bucketed (now)", "full batch (before)"):
    decoding.batch_rows = exact if padding.startswith("bucketed") else (
        lambda n, batch_size, multiple=1: exact(batch_size, batch_size, multiple))
    for path in ("/v1/optimize", "/v1/chat/completions"):
      _post(port, path, _body(path, tweets[-1]))  # compile this route's shapes
      for mode, clients in (("sequential", 1), (f"{_CONCURRENCY.value} at once",
                                                _CONCURRENCY.value)):
        batch = tweets[used:used + _REQUESTS.value]
        used += len(batch)
        figures = _run(port, path, batch, clients)
        rows.append({"route": path, "clients": mode, "decode padding": padding, **figures})
        print(rows[-1], flush=True)
  decoding.batch_rows = exact
  server.shutdown()
  meta = bench_common.run_meta(**{
      "config": os.path.relpath(_CONFIG.value, ROOT), "requests_per_row": _REQUESTS.value,
      "policy": f"round {sampler.round}" if _WORKDIR.value else "pretrained LM, fresh heads",
      "sample.batch_size": int(config.sample.batch_size)})
  print(meta)
  print(write_table(_OUT.value, rows, list(rows[0]), meta))


if __name__ == "__main__":
  app.run(main)
