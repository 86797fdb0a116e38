"""The HTTP backend against the project's own OpenAI-compatible server on loopback."""

import http.server
import json
import socket
import threading
import urllib.request

import numpy as np
import pytest

from qpo_jax import evaluation
from qpo_jax.eval_cache import EvalCache
from qpo_jax.checkpoints.registry import load_model
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


@pytest.mark.integration
def test_completions_scoring_equals_local(lm, server, monkeypatch):
  task, rows = _rows(6)
  pairs = [(ex, "Which topic?") for ex in rows]
  local = evaluation.evaluate_pairs(task, LocalTarget(lm, chat=False, batch_size=4), pairs)
  remote = evaluation.evaluate_pairs(task, _client(server, monkeypatch, concurrency=3), pairs)
  assert [o.pred for o in remote] == [o.pred for o in local]
  np.testing.assert_allclose([o.option_nll for o in remote], [o.option_nll for o in local],
                             atol=1e-4)


@pytest.mark.integration
def test_completions_scoring_of_a_chat_model_equals_local_chat(lm, server, monkeypatch):
  """Given the tokenizer, the user turn is put in the chat template client-side and the option
  follows as the reply: the same NLLs as LocalTarget(chat=True)."""
  task, rows = _rows(4)
  pairs = [(ex, "Which topic?") for ex in rows]
  local = evaluation.evaluate_pairs(task, LocalTarget(lm, chat=True, batch_size=4), pairs)
  client = _client(server, monkeypatch, chat_tokenizer=lm.tokenizer)
  remote = evaluation.evaluate_pairs(task, client, pairs)
  assert client.identity.endswith(":chat")
  np.testing.assert_allclose([o.option_nll for o in remote], [o.option_nll for o in local],
                             atol=1e-4)


@pytest.mark.integration
def test_a_scoring_request_is_one_forward_with_the_same_answer(lm):
  """echo + logprobs + max_tokens=1 at temperature 0 is one pass that runs the prompts'
  common beginning once: the same next token and log-probabilities as generating, then
  scoring each prompt whole."""
  ms = ModelServer(lm, "tiny")
  prompt = "Which topic? Sentence: the match went to penalties. Topic:"
  for texts in (("Hello there, how", "A", "Sports news today: the team"),  # nothing shared
                tuple(prompt + o for o in (" Sports", " Food", " Weather", " Technology")),
                (prompt,)):
    seqs = [ms.encode(t)[0] for t in texts]
    lps, new = ms.logprobs_and_next(seqs)
    want_new = ms.continue_ids(seqs, max_tokens=1, temperature=0.0, top_p=1.0, seed=0)
    want = ms.logprobs([s + n for s, n in zip(seqs, want_new)])
    assert new == want_new
    for a, b in zip(lps, want):
      np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.integration
def test_usage_counts_what_the_server_answered(lm):
  srv = make_server(ModelServer(lm, "tiny"))
  serve_in_thread(srv)
  try:
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    post = lambda path, body: urllib.request.urlopen(urllib.request.Request(  # noqa: E731
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}))
    post("/completions", {"prompt": ["a b", ""], "max_tokens": 1, "temperature": 0,
                          "echo": True, "logprobs": 0})  # an empty prompt: scored unshared
    post("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    with pytest.raises(urllib.error.HTTPError):  # refused: not counted
      post("/chat/completions", {})
    got = json.loads(urllib.request.urlopen(url + "/usage").read())
    assert got["requests"] == 2 and set(got["by_route"]) == {"/v1/completions",
                                                              "/v1/chat/completions"}
    assert got["by_route"]["/v1/completions"]["requests"] == 1
    assert got["prompt_tokens"] == sum(r["prompt_tokens"] for r in got["by_route"].values()) > 0
    assert 1 <= got["completion_tokens"] <= 1 * 2 + 2
  finally:
    srv.shutdown()
    srv.server_close()


@pytest.mark.integration
def test_chat_generation_equals_local(lm, server, monkeypatch):
  texts = ["What is 3 + 4?", "Name a colour.", "Say hi"]
  local = LocalTarget(lm, chat=True, batch_size=4).generate(texts, max_new_tokens=8)
  remote = _client(server, monkeypatch).generate(texts, max_new_tokens=8)
  assert [g.text for g in remote] == [g.text for g in local]
  np.testing.assert_allclose([g.nll for g in remote], [g.nll for g in local], atol=1e-4)
  assert [g.prompt_tokens for g in remote] == [g.prompt_tokens for g in local]


@pytest.mark.integration
def test_chat_first_token_scoring(server, monkeypatch):
  client = _client(server, monkeypatch, scoring="chat_first_token")
  nll, tokens = client.score_options(["Topic of: the match was great"],
                                     [["Sports", "Food", "Weather", "Technology"]])
  assert nll.shape == (1, 4) and np.isfinite(nll).all() and (nll > 0).all() and tokens > 0
  assert client.identity != _client(server, monkeypatch).identity


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


class _Scripted(http.server.BaseHTTPRequestHandler):
  """An OpenAI-compatible completions endpoint that misbehaves as `script` says, one
  entry per request: "ok", "not_json", "no_choices", "drop" (closes without answering) or
  "nan" (NaN logprobs). Every option's mean NLL is 0.5 when it answers."""

  script: list = []
  seen: list = []

  def do_POST(self):  # noqa: N802
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    what = self.script.pop(0) if self.script else "ok"
    self.seen.append(what)
    if what == "drop":
      self.close_connection = True
      self.connection.shutdown(socket.SHUT_RDWR)
      return
    value = float("nan") if what == "nan" else -0.5
    choices = [{"index": i, "text": p, "logprobs": {
        "token_logprobs": [None] + [value] * (len(p) - 1), "text_offset": list(range(len(p)))}}
        for i, p in enumerate(body["prompt"])]
    reply = {"not_json": b"<html>502 Bad Gateway</html>",
             "no_choices": json.dumps({"error": "overloaded"}).encode()}.get(
                 what, json.dumps({"choices": choices, "usage": {"prompt_tokens": 3}}).encode())
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(reply)))
    self.end_headers()
    self.wfile.write(reply)

  def log_message(self, *args):
    pass


@pytest.fixture()
def scripted():
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  _Scripted.script, _Scripted.seen = [], []
  yield srv
  srv.shutdown()


def _scripted_client(srv, retries):
  return HttpTarget(f"http://127.0.0.1:{srv.server_address[1]}/v1", "m", max_retries=retries,
                    backoff_s=0.01, timeout_s=5.0)


@pytest.mark.integration
@pytest.mark.parametrize("fault,message", [
    ("not_json", r"the response is not JSON .*502 Bad Gateway"),
    ("no_choices", r"the response lacks what an OpenAI-compatible server sends \(KeyError: 'choices'\)"),
    ("drop", r"the connection was dropped \(RemoteDisconnected"),
])
def test_malformed_responses_are_retried_then_named(scripted, fault, message):
  client = _scripted_client(scripted, retries=2)
  _Scripted.script = [fault, fault]
  nll, _ = client.score_options(["News: x\nTopic:"], [["a", "b"]])  # the third try answers
  np.testing.assert_allclose(nll, [[0.5, 0.5]])
  assert _Scripted.seen == [fault, fault, "ok"]
  _Scripted.script = [fault] * 3
  url = f"http://127.0.0.1:{scripted.server_address[1]}/v1/completions"
  with pytest.raises(TargetError, match=f"POST {url}: {message}.*\\(3 attempts\\)"):
    client.score_options(["News: x\nTopic:"], [["a", "b"]])


@pytest.mark.integration
def test_non_finite_answers_never_reach_the_cache(scripted, tmp_path):
  """A NaN log-probability from a server stops the stage with the URL and the pair; the
  chunk is not cached, so a rerun asks again."""
  task, rows = _rows(3)
  cache = EvalCache(str(tmp_path / "cache.sqlite"))
  client = _scripted_client(scripted, retries=0)
  _Scripted.script = ["ok", "nan", "ok"]
  with pytest.raises(TargetError, match=rf"target http:http://127.0.0.1:{scripted.server_address[1]}"
                     r"/v1:m:completions gave a non-finite NLL \(\[nan, nan, nan, nan\]\) for "
                     r"the pair \(query all:\d, prompt 'Which topic\?'\)"):
    evaluation.evaluate_pairs(task, client, [(ex, "Which topic?") for ex in rows], cache=cache,
                              chunk=8)
  assert cache.get_many([]) == {} and sum(u["calls"] for u in cache.usage().values()) == 0
  outs = evaluation.evaluate_pairs(task, client, [(ex, "Which topic?") for ex in rows],
                                   cache=cache, chunk=8)  # the server behaves now
  assert [o.option_nll for o in outs] == [(0.5,) * 4] * 3


@pytest.mark.integration
def test_wrong_option_count_is_named():
  class Short:
    identity = "short-target"

    def score_options(self, texts, options):
      return np.zeros((len(texts), 1)), 0

  task, rows = _rows(2)
  with pytest.raises(TargetError, match=r"target short-target gave 1 option NLLs for 4 options "
                     r"for the pair \(query all:0, prompt 'p'\)"):
    evaluation.evaluate_pairs(task, Short(), [(rows[0], "p")])
