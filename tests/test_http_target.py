"""The HTTP backend against the project's own OpenAI-compatible server on loopback."""

import json
import urllib.request

import numpy as np
import pytest

from qpo_jax import evaluation
from qpo_jax.models.registry import load_model
from qpo_jax.targets import HttpTarget, LocalTarget, TargetError
from qpo_jax.targets.server import ModelServer, make_server, serve_in_thread
from qpo_jax.tasks import get_task

KEY = "sk-test-secret-123"


@pytest.fixture(scope="module")
def lm():
  return load_model({"name": "random", "preset": "tiny-llama", "tokenizer": "smollm2", "seed": 5})


@pytest.fixture(scope="module")
def server(lm):
  srv = make_server(ModelServer(lm, "tiny"), api_key=KEY)
  serve_in_thread(srv)
  yield srv
  srv.shutdown()


def _client(server, monkeypatch, **kw):
  monkeypatch.setenv("QPO_TEST_KEY", KEY)
  host, port = server.server_address[:2]
  return HttpTarget(f"http://{host}:{port}/v1", "tiny", api_key_env="QPO_TEST_KEY",
                    backoff_s=0.01, **kw)


def _rows(n):
  task = get_task("topics")
  return task, [task.to_example(r, f"all:{i}") for i, r in enumerate(task.builtin_rows(n, 2))]


def test_completions_scoring_equals_local(lm, server, monkeypatch):
  task, rows = _rows(6)
  pairs = [(ex, "Which topic?") for ex in rows]
  local = evaluation.evaluate_pairs(task, LocalTarget(lm, chat=False, batch_size=4), pairs)
  remote = evaluation.evaluate_pairs(task, _client(server, monkeypatch, concurrency=3), pairs)
  assert [o.pred for o in remote] == [o.pred for o in local]
  np.testing.assert_allclose([o.option_nll for o in remote], [o.option_nll for o in local],
                             atol=1e-4)


@pytest.mark.slow
def test_chat_generation_equals_local(lm, server, monkeypatch):
  texts = ["What is 3 + 4?", "Name a colour.", "Say hi"]
  local = LocalTarget(lm, chat=True, batch_size=4).generate(texts, max_new_tokens=8)
  remote = _client(server, monkeypatch).generate(texts, max_new_tokens=8)
  assert [g.text for g in remote] == [g.text for g in local]
  np.testing.assert_allclose([g.nll for g in remote], [g.nll for g in local], atol=1e-4)
  assert [g.prompt_tokens for g in remote] == [g.prompt_tokens for g in local]


def test_chat_first_token_scoring(server, monkeypatch):
  client = _client(server, monkeypatch, scoring="chat_first_token")
  nll, tokens = client.score_options(["Topic of: the match was great"],
                                     [["Sports", "Food", "Weather", "Technology"]])
  assert nll.shape == (1, 4) and np.isfinite(nll).all() and (nll > 0).all() and tokens > 0
  assert client.identity != _client(server, monkeypatch).identity


def test_retries_on_injected_429_and_500(server, monkeypatch):
  client = _client(server, monkeypatch, max_retries=3)
  expected = client.generate(["Say hi"], max_new_tokens=3)[0].text
  server.inject_faults(429, 500, 503)
  assert client.generate(["Say hi"], max_new_tokens=3)[0].text == expected
  server.inject_faults(500, 500, 500, 500)
  with pytest.raises(TargetError, match=r"HTTP 500"):
    client.generate(["Say hi"], max_new_tokens=3)
  server.inject_faults(400)  # not retryable: fails at once, queue drained
  with pytest.raises(TargetError, match=r"HTTP 400"):
    client.generate(["Say hi"], max_new_tokens=3)
  assert client.generate(["Say hi"], max_new_tokens=3)[0].text == expected


def test_timeout_is_a_clear_error(lm, monkeypatch):
  slow = make_server(ModelServer(lm, "tiny"), delay_s=1.5)
  serve_in_thread(slow)
  try:
    host, port = slow.server_address[:2]
    client = HttpTarget(f"http://{host}:{port}/v1", "tiny", timeout_s=0.3, max_retries=1,
                        backoff_s=0.01)
    with pytest.raises(TargetError, match=r"timed out after 0.3s \(2 attempts\)"):
      client.generate(["hi"], max_new_tokens=2)
  finally:
    slow.shutdown()


def test_key_is_sent_but_never_shown(server, monkeypatch):
  monkeypatch.setenv("QPO_WRONG_KEY", "sk-wrong-key-456")
  host, port = server.server_address[:2]
  client = HttpTarget(f"http://{host}:{port}/v1", "tiny", api_key_env="QPO_WRONG_KEY")
  with pytest.raises(TargetError, match="HTTP 401") as err:
    client.generate(["hi"], max_new_tokens=2)
  assert "sk-wrong" not in str(err.value) and "sk-wrong" not in repr(client)
  good = _client(server, monkeypatch)
  assert KEY not in repr(good) and KEY not in good.identity


def test_server_speaks_the_openai_format(server):
  host, port = server.server_address[:2]
  body = {"model": "tiny", "prompt": ["Hello there", "Hi"], "max_tokens": 2, "echo": True,
          "logprobs": 0, "temperature": 0}
  req = urllib.request.Request(f"http://{host}:{port}/v1/completions", json.dumps(body).encode(),
                               {"Authorization": f"Bearer {KEY}"})
  resp = json.loads(urllib.request.urlopen(req).read())
  c = resp["choices"][0]
  assert c["text"].startswith("Hello there") and c["logprobs"]["token_logprobs"][0] is None
  assert c["logprobs"]["text_offset"][:2] == [0, len("Hello")]
  assert resp["usage"]["prompt_tokens"] == 3 and len(resp["choices"]) == 2
  req = urllib.request.Request(f"http://{host}:{port}/v1/chat/completions", b"{}",
                               {"Authorization": f"Bearer {KEY}"})
  with pytest.raises(urllib.error.HTTPError) as err:
    urllib.request.urlopen(req)
  assert err.value.code == 400
