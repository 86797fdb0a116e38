"""`serve_target` cannot be knocked over: bounded requests, auth first, 4xx for bad input, load.

Loopback only; every client has a timeout and every test a fixed request count.
"""

import concurrent.futures
import http.client
import json
import socket
import threading
import time

import pytest

from qpo_jax.checkpoints.registry import load_model
from qpo_jax.targets import server as server_lib
from qpo_jax.targets.server import Limits, ModelServer, make_server, serve_in_thread

KEY = "sk-limits-456"
LIMITS = Limits(max_tokens=32, max_body_bytes=20_000, request_timeout_s=20.0,
                max_prompt_tokens=200, max_prompts=4, chunk_tokens=8)


@pytest.fixture(scope="module")
def lm():
  return load_model({"name": "random", "preset": "tiny-llama", "tokenizer": "smollm2", "seed": 5})


def _start(lm, limits=LIMITS):
  model = ModelServer(lm, "tiny")
  srv = make_server(model, api_key=KEY, limits=limits)
  serve_in_thread(srv)
  return srv, model


@pytest.fixture(scope="module")
def server(lm):
  srv, _ = _start(lm)
  yield srv
  srv.shutdown()


def _post(srv, path, body, key=KEY, headers=None, timeout=60):
  """(status, parsed JSON) of one POST; `body` bytes are sent as they are."""
  host, port = srv.server_address[:2]
  conn = http.client.HTTPConnection(host, port, timeout=timeout)
  data = body if isinstance(body, bytes) else json.dumps(body).encode()
  hdrs = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
  hdrs.update(headers or {})
  try:
    conn.request("POST", path, data, hdrs)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"null")
  finally:
    conn.close()


def _raw(srv, request: bytes, timeout=10) -> bytes:
  """Sends raw bytes, returns what the server answers (until it closes or times out)."""
  host, port = srv.server_address[:2]
  with socket.create_connection((host, port), timeout=timeout) as s:
    s.sendall(request)
    out = b""
    try:
      while b"\r\n\r\n" not in out or len(out) < out.index(b"\r\n\r\n") + 4 + _length(out):
        chunk = s.recv(65536)
        if not chunk:
          break
        out += chunk
    except socket.timeout:
      pass
    return out


def _length(head: bytes) -> int:
  for line in head.split(b"\r\n"):
    if line.lower().startswith(b"content-length:"):
      return int(line.split(b":")[1])
  return 0


def _alive(srv):
  status, body = _post(srv, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "temperature": 0})
  assert status == 200 and len(body["choices"]) == 1


GOOD = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}


@pytest.mark.integration
@pytest.mark.parametrize("body,code,words", [
    ({"prompt": "Hi", "max_tokens": 1_000_000_000}, 400, "'max_tokens'=1e+09 is outside [0, 32]"),
    ({"prompt": "Hi", "max_tokens": 1e12}, 400, "outside [0, 32]"),
    ({"prompt": "Hi", "max_tokens": -1}, 400, "outside [0, 32]"),
    ({"prompt": "Hi", "max_tokens": "lots"}, 400, "'max_tokens' must be an integer"),
    ({"prompt": "Hi", "max_tokens": float("inf")}, 400, "'max_tokens' must be an integer"),
    ({"prompt": "Hi", "max_tokens": float("nan")}, 400, "'max_tokens' must be an integer"),
    ({"prompt": "Hi", "top_p": float("nan")}, 400, "'top_p' must be a number"),
    ({"prompt": "Hi", "max_tokens": 2.5}, 400, "'max_tokens' must be an integer"),
    ({"prompt": "Hi", "temperature": "hot"}, 400, "'temperature' must be a number"),
    ({"prompt": ["a", "b", "c", "d", "e"]}, 400, "5 prompts in one request"),
    ({"prompt": "word " * 400}, 400, "this server takes at most 200"),
    ({"prompt": 7}, 400, "'prompt' must be a string"),
    ({"prompt": []}, 400, "'prompt' must be a string"),
])
def test_completions_are_bounded(server, body, code, words, caplog):
  """Each bad request is refused before it reaches the model (max_tokens=1e9 once crashed XLA);
  its access-log line gives the reason the client was told."""
  with caplog.at_level("INFO"):
    status, out = _post(server, "/v1/completions", body)
  assert status == code and words in out["error"]["message"], out
  assert any(f'" {code} ' in r.getMessage() and words in r.getMessage() for r in caplog.records)
  _alive(server)


@pytest.mark.parametrize("body,words", [
    (b"[1, 2]", "must be a JSON object, not list"),
    (b'"hello"', "must be a JSON object, not str"),
    (b"{not json", "the body is not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "20000"),  # over max_body_bytes: refused unread (413)
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (json.dumps({"messages": [{"role": "user"}]}).encode(), "messages[0] must be an object"),
    (json.dumps({"messages": [{"role": "user", "content": {"x": 1}}]}).encode(),
     "messages[0] must be an object"),
    (json.dumps({"messages": "hi"}).encode(), "'messages' must be a non-empty list"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e12}).encode(),
     "outside [0, 32]"),
])
def test_malformed_chat_requests_get_4xx_json(server, body, words):
  status, out = _post(server, "/v1/chat/completions", body)
  assert 400 <= status < 500 and words in out["error"]["message"], (status, out)
  assert out["error"]["code"] == status
  _alive(server)


def test_bad_content_length_and_unknown_route(server):
  head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
          + b"\r\nContent-Length: twelve\r\n\r\n{}")
  answer = _raw(server, head)
  assert answer.startswith(b"HTTP/1.1 400") and b"numeric Content-Length" in answer
  for length in ("\u00b2", "1\u00b3", "-5", "1e3"):  # headers are Latin-1; '²'.isdigit() is true
    answer = _raw(server, head.replace(b"twelve", length.encode("latin-1")))
    assert answer.startswith(b"HTTP/1.1 400") and b"numeric Content-Length" in answer, length
  status, out = _post(server, "/v1/nothing", {"prompt": "x"})
  assert status == 404 and "no route" in out["error"]["message"]
  _alive(server)


def test_key_is_checked_before_the_body_is_read(server):
  """A 50 MB body without the key: 401 at once, after 1 KB was sent, the rest never read."""
  head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Content-Length: 50000000\r\n\r\n" + b" " * 1024)
  start = time.monotonic()
  answer = _raw(server, head, timeout=5)
  assert answer.startswith(b"HTTP/1.1 401") and b"missing or wrong API key" in answer
  assert time.monotonic() - start < 3
  status, _ = _post(server, "/v1/completions", {"prompt": "x"}, key="sk-wrong")
  assert status == 401
  _alive(server)


@pytest.mark.integration
def test_busy_model_is_503_after_the_time_limit(lm):
  srv, model = _start(lm, Limits(request_timeout_s=0.5))
  try:
    model.lock.acquire()  # another request holds the model
    try:
      start = time.monotonic()
      status, out = _post(srv, "/v1/completions", GOOD)
      assert status == 503 and "busy" in out["error"]["message"]
      assert 0.5 <= time.monotonic() - start < 5
    finally:
      model.lock.release()
    assert _post(srv, "/v1/completions", GOOD)[0] == 200
  finally:
    srv.shutdown()


@pytest.mark.integration
def test_prompt_plus_max_tokens_must_fit_the_context(lm):
  srv, _ = _start(lm, Limits(max_tokens=1000))
  try:
    status, out = _post(srv, "/v1/completions", {"prompt": "Hi", "max_tokens": 300})
    assert status == 400 and "exceed the model's context of 256 tokens" in out["error"]["message"]
  finally:
    srv.shutdown()


def _counting_generate(monkeypatch, delay_s):
  """Counts generation chunks (each slowed by delay_s)."""
  calls = []
  real = server_lib.decoding.generate_ids

  def slow(*args, **kw):
    calls.append(kw["max_new_tokens"])
    time.sleep(delay_s)
    return real(*args, **kw)

  monkeypatch.setattr(server_lib.decoding, "generate_ids", slow)
  return calls


@pytest.mark.integration
def test_generation_past_the_time_limit_is_504(lm, monkeypatch):
  srv, _ = _start(lm, Limits(max_tokens=200, request_timeout_s=1.0, chunk_tokens=4))
  calls = _counting_generate(monkeypatch, 0.3)
  try:
    body = {"prompt": "Count:", "max_tokens": 200, "temperature": 1.0, "seed": 3}
    status, out = _post(srv, "/v1/completions", body)  # this seed writes 200 tokens, no EOS
    assert status == 504 and "time limit of 1s" in out["error"]["message"], out
    assert len(calls) <= 6  # stopped after about 1 s of 0.3 s chunks, not 50 chunks
  finally:
    srv.shutdown()


@pytest.mark.integration
def test_generation_stops_when_the_client_goes_away(lm, monkeypatch):
  srv, model = _start(lm, Limits(max_tokens=200, request_timeout_s=60.0, chunk_tokens=4))
  calls = _counting_generate(monkeypatch, 0.2)
  try:
    host, port = srv.server_address[:2]
    body = json.dumps({"prompt": "Count:", "max_tokens": 200, "temperature": 0}).encode()
    with socket.create_connection((host, port), timeout=5) as s:
      s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\n\r\n" + body)
      time.sleep(0.5)  # generation has started
    assert model.lock.acquire(timeout=5)  # released soon after the client left
    model.lock.release()
    assert len(calls) < 20  # 200 tokens would be 50 chunks
  finally:
    srv.shutdown()


@pytest.mark.integration
def test_bounded_load_mixing_good_oversized_and_malformed(server):
  """20 clients x 5 requests, all connecting at once; each good one gets the serial answer
  (no connection refused or reset: the listen backlog holds them), each bad one a 4xx."""
  prompts = ["The capital of France is", "One, two,", "Hello", "Tweet: I love it"]
  expected = {}
  for p in prompts:  # the answers one client alone gets
    status, out = _post(server, "/v1/completions", dict(GOOD, prompt=p))
    assert status == 200
    expected[p] = out["choices"][0]["text"]
  bad = [(b"[1]", 400), (json.dumps({"prompt": "x", "max_tokens": 10**9}).encode(), 400),
         (b"{" * 30_000, 413), (b"{oops", 400)]

  start = threading.Barrier(20)

  def client(i):
    results = []
    start.wait()
    for j in range(5):
      if (i + j) % 2 == 0:
        p = prompts[(i + j) % len(prompts)]
        status, out = _post(server, "/v1/completions", dict(GOOD, prompt=p), timeout=120)
        results.append(status == 200 and out["choices"][0]["text"] == expected[p])
      else:
        body, code = bad[(i + j) % len(bad)]
        status, out = _post(server, "/v1/completions", body, timeout=120)
        results.append(status == code and out["error"]["code"] == code)
    return results

  with concurrent.futures.ThreadPoolExecutor(20) as pool:
    outcomes = [r for rs in pool.map(client, range(20), timeout=300) for r in rs]
  assert len(outcomes) == 100 and all(outcomes), outcomes
  _alive(server)
  assert threading.active_count() < 50  # no thread left behind per request
