"""`serve-target`: a small OpenAI-compatible server in front of a local JAX model.

Endpoints: GET /v1/models, GET /v1/usage (requests answered, with their tokens,
since the start, in all and per route: how an optimiser's target calls are
counted), POST /v1/completions (prompt: str or list; echo; logprobs with tokens /
token_logprobs / text_offset; greedy or sampled continuation of max_tokens) and
POST /v1/chat/completions (the model's chat template; logprobs and top_logprobs of
the generated tokens). Every completion has an `id` and `created`;
`finish_reason` is "length" when `max_tokens` cut it; `stream: true` sends the
finished answer as server-sent events in OpenAI's chunk format (the text in one
chunk; `stream_options.include_usage` adds the usage chunk). Enough for the HTTP backend, the `openai` client, vLLM-style
clients and a quick curl; one request runs on the model at a time (requests
are accepted concurrently), and each gets one access-log line.

No request can take the server down or hold it for long (`Limits`): the key is
checked from the headers before the body is read; the body's size, the prompt's
tokens, `max_tokens` and the number of prompts are capped; a request waits for
the model and generates for at most `request_timeout_s` (checked every
`chunk_tokens` tokens, when generation also stops if the client went away); and
every malformed request gets a 4xx JSON error, any other failure a 500 one.

For testing clients, `inject_faults(429, 500, ...)` makes the next requests
fail with those statuses and `delay_s` delays every response.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import http.server
import json
import math
import select
import socket
import threading
import time
import uuid
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from qpo_jax import decoding, scoring, sharding, tokens
from qpo_jax.tokens import encode
from qpo_jax.models.config import ModelConfig
from qpo_jax.checkpoints.registry import LanguageModel
from qpo_jax.models.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask of the server (configs/base.py `serve`)."""
  max_tokens: int = 512  # tokens generated per prompt
  max_body_bytes: int = 1_000_000
  request_timeout_s: float = 60.0  # waiting for the model plus generating
  max_prompt_tokens: int = 2048
  max_prompts: int = 64  # prompts in one /v1/completions request
  chunk_tokens: int = 64  # generated between checks of the time limit and the client


class RequestError(ValueError):
  """A request the server refuses, with its HTTP status."""

  def __init__(self, code: int, message: str):
    super().__init__(message)
    self.code = code


@functools.partial(jax.jit, static_argnames=("cfg", "k"))
def _top_logprobs(cfg: ModelConfig, params, tokens, mask, k: int):
  """[B, T, k] best log-probabilities (and ids) of the token after each position."""
  model = Transformer(cfg)
  hidden, _ = model.apply({"params": params}, tokens, mask)
  logp = jax.nn.log_softmax(model.apply({"params": params}, hidden, method=model.logits), -1)
  return jax.lax.top_k(logp, k)


class ModelServer:
  """The model side of the server: tokenize, continue, score. Thread-safe by a lock."""

  def __init__(self, lm: LanguageModel, model_name: str, batch_size: int = 8):
    # on the device once, not copied in at every request
    self.lm = dataclasses.replace(lm, params=sharding.shard_params(lm.params, None))
    self.model_name, self.batch_size = model_name, batch_size
    tok = lm.tokenizer
    self.eos_ids = tokens.stop_ids(tok)
    self.lock = threading.Lock()

  def encode(self, text: str) -> tuple[list[int], list[int]]:
    return encode(self.lm.tokenizer, text, with_offsets=True)

  def continue_ids(self, seqs: list[list[int]], *, max_tokens: int, temperature: float,
                   top_p: float, seed: int, stop: Callable[[], bool] = lambda: False,
                   limits: Limits | None = None) -> list[list[int]]:
    """Continuations, `limits.chunk_tokens` at a time: between chunks a request that is past
    its time limit ends (504) and one whose client went away stops (499)."""
    limits = limits or Limits()
    deadline = time.monotonic() + limits.request_timeout_s
    out: list[list[int]] = [[] for _ in seqs]
    live = list(range(len(seqs)))
    step = 0
    while live and max_tokens > 0:
      n = min(limits.chunk_tokens, max_tokens - len(out[live[0]]))
      new = decoding.generate_ids(self.lm, [seqs[i] + out[i] for i in live], max_new_tokens=n,
                                  eos_ids=self.eos_ids, batch_size=self.batch_size,
                                  length_multiple=32, seed=seed + step,
                                  temperature=temperature, top_p=top_p)
      for i, gen in zip(live, new):
        out[i] += gen
      live = [i for i, gen in zip(live, new) if len(gen) == n and gen[-1] not in self.eos_ids
              and len(out[i]) < max_tokens]
      step += 1
      if live and stop():
        raise RequestError(499, "the client went away")
      if live and time.monotonic() > deadline:
        raise RequestError(504, f"generation ran past this server's time limit of "
                                f"{limits.request_timeout_s:g}s; ask for fewer max_tokens")
    return out

  def logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
    return scoring.sequence_logprobs(self.lm, seqs, batch_size=self.batch_size)

  def logprobs_and_next(self, seqs: list[list[int]]) -> tuple[list[np.ndarray], list[list[int]]]:
    """Log-probabilities of the prompts and of their greedy next token, in one pass that runs
    their common beginning once: a scoring request (echo, logprobs, max_tokens=1,
    temperature 0; K options after one prompt) costs about one prompt, not 2K."""
    lps, nxt, nxt_lp = scoring.shared_prefix_logprobs(self.lm, seqs)
    new = [[] if t in self.eos_ids else [t] for t in nxt]
    return [np.concatenate([lp, [v]]) if n else lp for lp, n, v in zip(lps, new, nxt_lp)], new

  def top(self, seq: list[int], start: int, k: int) -> list[list[tuple[int, float]]]:
    """Top-k next-token log-probabilities at positions start-1 .. len-2 (the generated tokens)."""
    ids, mask = decoding.pad_batch([seq], tokens.pad_id(self.lm.tokenizer), side="right",
                                   multiple=32)
    values, indices = _top_logprobs(self.lm.cfg, self.lm.params, jnp.asarray(ids),
                                    jnp.asarray(mask), k)
    values, indices = np.asarray(values[0]), np.asarray(indices[0])
    return [list(zip(indices[p].tolist(), values[p].tolist())) for p in range(start - 1, len(seq) - 1)]

  def piece(self, token_id: int) -> str:
    return self.lm.tokenizer.decode([token_id])

  # --- endpoints ----------------------------------------------------------

  def routes(self) -> dict[str, Callable[..., dict[str, Any]]]:
    return {"/v1/completions": self.completions, "/v1/chat/completions": self.chat}

  def completions(self, body: dict[str, Any], limits: Limits, stop: Callable[[], bool]
                  ) -> dict[str, Any]:
    prompts = body.get("prompt", "")
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
      raise RequestError(400, "'prompt' must be a string or a non-empty list of strings")
    if len(prompts) > limits.max_prompts:
      raise RequestError(400, f"{len(prompts)} prompts in one request; this server takes at "
                              f"most {limits.max_prompts}")
    knobs = request_knobs(body, limits, default_max_tokens=16)
    encoded = [self.encode(p) for p in prompts]
    for ids, _ in encoded:
      self._check_length(ids, knobs["max_tokens"], limits)
    want_lp = body.get("logprobs") is not None
    with hold(self.lock, limits, stop):
      if want_lp and knobs["max_tokens"] == 1 and knobs["temperature"] == 0 and \
          all(e[0] for e in encoded):
        lps, new = self.logprobs_and_next([e[0] for e in encoded])
      else:
        new = self.continue_ids([e[0] for e in encoded], **knobs, stop=stop, limits=limits)
        lps = self.logprobs([e[0] + n for e, n in zip(encoded, new)]) if want_lp else None
    choices = []
    for i, ((ids, offsets), gen) in enumerate(zip(encoded, new)):
      text = self.lm.tokenizer.decode(gen, skip_special_tokens=True)
      choice = {"index": i, "text": (prompts[i] if body.get("echo") else "") + text,
                "finish_reason": "length" if len(gen) >= knobs["max_tokens"] else "stop",
                "logprobs": None}
      if want_lp:
        all_ids = ids + gen
        gen_offsets, pos = [], len(prompts[i])
        for t in gen:
          gen_offsets.append(pos)
          pos += len(self.piece(t))
        lp = [None] + lps[i][1:].tolist()
        first = 0 if body.get("echo") else len(ids)
        choice["logprobs"] = {"tokens": [self.piece(t) for t in all_ids[first:]],
                              "token_logprobs": lp[first:],
                              "text_offset": (offsets + gen_offsets)[first:]}
      choices.append(choice)
    n_prompt = sum(len(e[0]) for e in encoded)
    n_gen = sum(len(g) for g in new)
    return {"object": "text_completion", "model": self.model_name, "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
                      "total_tokens": n_prompt + n_gen}}

  def chat(self, body: dict[str, Any], limits: Limits, stop: Callable[[], bool]
           ) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
      raise RequestError(400, "'messages' must be a non-empty list")
    for i, m in enumerate(messages):
      if not isinstance(m, dict) or not isinstance(m.get("content"), str) or \
          m.get("role") not in ("system", "user", "assistant"):
        raise RequestError(400, f"messages[{i}] must be an object with a 'role' (system, user "
                                "or assistant) and a string 'content'")
    tok = self.lm.tokenizer
    if getattr(tok, "chat_template", None):
      text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
      text = "\n\n".join(m["content"] for m in messages)
    ids, _ = self.encode(text)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
      body = dict(body, max_tokens=body["max_completion_tokens"])
    knobs = request_knobs(body, limits, default_max_tokens=min(256, limits.max_tokens))
    self._check_length(ids, knobs["max_tokens"], limits)
    k = int_field(body, "top_logprobs", 0, 0, 20)
    with hold(self.lock, limits, stop):
      gen = self.continue_ids([ids], **knobs, stop=stop, limits=limits)[0]
      content = None
      if body.get("logprobs") and gen:
        lp = self.logprobs([ids + gen])[0][len(ids):]
        tops = self.top(ids + gen, len(ids), k) if k else [[] for _ in gen]
        content = [{"token": self.piece(t), "logprob": float(v),
                    "top_logprobs": [{"token": self.piece(i), "logprob": float(x)}
                                     for i, x in top]}
                   for t, v, top in zip(gen, lp, tops)]
    return {"object": "chat.completion", "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": tok.decode(gen, skip_special_tokens=True)},
                         "finish_reason": "length" if len(gen) >= knobs["max_tokens"] else "stop",
                         "logprobs": {"content": content} if content is not None else None}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(gen),
                      "total_tokens": len(ids) + len(gen)}}

  def _check_length(self, ids: list[int], max_tokens: int, limits: Limits) -> None:
    if len(ids) > limits.max_prompt_tokens:
      raise RequestError(400, f"the prompt is {len(ids)} tokens; this server takes at most "
                              f"{limits.max_prompt_tokens}")
    if len(ids) + max_tokens > self.lm.cfg.max_len:
      raise RequestError(400, f"{len(ids)} prompt tokens + max_tokens={max_tokens} exceed the "
                              f"model's context of {self.lm.cfg.max_len} tokens")

@contextlib.contextmanager
def hold(lock: threading.Lock, limits: Limits, stop: Callable[[], bool]):
  """The model, for one request at a time; 503 if it stays busy past the time limit."""
  if not lock.acquire(timeout=limits.request_timeout_s):
    raise RequestError(503, f"the model stayed busy for {limits.request_timeout_s:g}s; retry")
  try:
    if stop():
      raise RequestError(499, "the client went away")
    yield
  finally:
    lock.release()


def int_field(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
  value = body.get(name, default)
  if value is None:
    value = default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or \
      not math.isfinite(value) or value != int(value):
    raise RequestError(400, f"'{name}' must be an integer, got {json.dumps(value)[:40]}")
  if not lo <= value <= hi:
    raise RequestError(400, f"'{name}'={value:g} is outside [{lo}, {hi}] (this server's limit)")
  return int(value)


def float_field(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
  value = body.get(name, default)
  if value is None:
    value = default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
    raise RequestError(400, f"'{name}' must be a number in [{lo:g}, {hi:g}], "
                            f"got {json.dumps(value)[:40]}")
  return float(value)


def request_knobs(body: dict[str, Any], limits: Limits, default_max_tokens: int
                  ) -> dict[str, Any]:
  return {"max_tokens": int_field(body, "max_tokens", default_max_tokens, 0, limits.max_tokens),
          "temperature": float_field(body, "temperature", 1.0, 0.0, 2.0),
          "top_p": float_field(body, "top_p", 1.0, 1e-6, 1.0),
          "seed": int_field(body, "seed", 0, 0, 2**31 - 1)}


def _client_gone(sock: socket.socket) -> bool:
  """True once the client closed its side (readable with nothing to read)."""
  try:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
  except (OSError, ValueError):
    return True


def make_server(model: Any, host: str = "127.0.0.1", port: int = 0,
                api_key: str = "", delay_s: float = 0.0, limits: Limits | None = None
                ) -> http.server.ThreadingHTTPServer:
  """An HTTP server (not yet serving); `server.server_address` has the bound port.

  `model` answers the POST routes (`model.routes()`: path -> fn(body, limits, stop)) and
  names itself in GET /v1/models (`model.model_name`): a ModelServer, or the policy's.
  """
  limits = limits or Limits()
  faults: list[int] = []
  state_lock = threading.Lock()
  usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "by_route": {}}

  def count(route: str, payload: dict[str, Any]) -> None:
    """What was answered (status 200): requests and tokens, in all and per route."""
    tokens = payload.get("usage") or {}
    with state_lock:
      for entry in (usage, usage["by_route"].setdefault(
          route, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})):
        entry["requests"] += 1
        entry["prompt_tokens"] += int(tokens.get("prompt_tokens", 0))
        entry["completion_tokens"] += int(tokens.get("completion_tokens", 0))

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = limits.request_timeout_s  # a client that stops sending mid-body is dropped

    def log_message(self, fmt, *args):  # quiet; absl logging instead of stderr lines
      logging.debug("serve: " + fmt, *args)

    def log_request(self, code="-", size="-"):  # one access-log line per request
      del size
      took = time.monotonic() - getattr(self, "_started", time.monotonic())
      why = getattr(self, "_why", "")  # a refused request's reason, as its client was told
      self._why = ""
      logging.info('%s "%s" %s %.2fs%s', self.client_address[0], self.requestline, code, took,
                   f": {why}" if why else "")

    def _send(self, code: int, payload: dict[str, Any]):
      data = json.dumps(payload).encode()
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      if code in (429, 503):
        self.send_header("Retry-After", "0" if code == 429 else "1")
      if self.close_connection:
        self.send_header("Connection", "close")
      self.end_headers()
      self.wfile.write(data)

    def _stream(self, payload: dict[str, Any], include_usage: bool):
      """A finished answer as server-sent events in OpenAI's chunk format: one chunk with
      the text, one with the finish reason (and usage when asked), then [DONE]."""
      chat = payload["object"] == "chat.completion"
      self.close_connection = True  # the stream ends when the connection closes
      self.send_response(200)
      self.send_header("Content-Type", "text/event-stream")
      self.send_header("Cache-Control", "no-cache")
      self.send_header("Connection", "close")
      self.end_headers()
      head = {k: payload[k] for k in ("id", "created", "model")}
      head["object"] = "chat.completion.chunk" if chat else "text_completion"
      events = []
      for c in payload["choices"]:
        text = c["message"]["content"] if chat else c["text"]
        first = {"role": "assistant", "content": text} if chat else None
        events.append({**head, "choices": [
            {"index": c["index"], **({"delta": first} if chat else {"text": text}),
             "finish_reason": None, "logprobs": None}]})
        events.append({**head, "choices": [
            {"index": c["index"], **({"delta": {}} if chat else {"text": ""}),
             "finish_reason": c["finish_reason"], "logprobs": None}]})
      if include_usage:
        events.append({**head, "choices": [], "usage": payload.get("usage")})
      if "qpo" in payload:
        events[0]["qpo"] = payload["qpo"]
      for event in events:
        self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
      self.wfile.write(b"data: [DONE]\n\n")

    def _error(self, code: int, message: str):
      self._why = message[:200]
      self._send(code, {"error": {"message": message, "code": code}})

    def _authorized(self) -> bool:
      """Checked from the headers alone: a body without the key is never read."""
      if api_key and not hmac.compare_digest(self.headers.get("Authorization", ""),
                                             f"Bearer {api_key}"):
        self.close_connection = True
        self._error(401, "missing or wrong API key")
        return False
      return True

    def do_GET(self):  # noqa: N802
      self._started = time.monotonic()
      if not self._authorized():
        return
      if self.path.rstrip("/") == "/v1/models":
        self._send(200, {"object": "list", "data": [{"id": model.model_name, "object": "model"}]})
      elif self.path.rstrip("/") == "/v1/usage":
        with state_lock:
          answered = json.loads(json.dumps(usage))
        self._send(200, answered)
      else:
        self._error(404, f"no route {self.path}")

    def _body(self) -> dict[str, Any]:
      length = self.headers.get("Content-Length")
      if length is None or not (length.strip().isascii() and length.strip().isdigit()):
        self.close_connection = True
        raise RequestError(411 if length is None else 400,
                           "a numeric Content-Length header is required")
      if int(length) > limits.max_body_bytes:
        self.close_connection = True  # the body is not read
        raise RequestError(413, f"the body is {int(length)} bytes; this server takes at most "
                                f"{limits.max_body_bytes}")
      raw = self.rfile.read(int(length))
      try:
        body = json.loads(raw or b"{}")
      except RecursionError:
        raise RequestError(400, "the JSON body is nested too deeply") from None
      except ValueError as e:
        raise RequestError(400, f"the body is not JSON: {e}") from None
      if not isinstance(body, dict):
        raise RequestError(400, f"the body must be a JSON object, not {type(body).__name__}")
      return body

    def do_POST(self):  # noqa: N802
      self._started = time.monotonic()
      if not self._authorized():
        return
      try:
        body = self._body()
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
          raise RequestError(400, f"'stream' must be true or false, got {json.dumps(stream)[:40]}")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
          raise RequestError(400, "'stream_options' must be an object")
        with state_lock:
          fault = faults.pop(0) if faults else None
        if delay_s:
          time.sleep(delay_s)
        if fault:
          raise RequestError(fault, "injected fault")
        route = model.routes().get(self.path.rstrip("/"))
        if route is None:
          raise RequestError(404, f"no route {self.path}")
        payload = route(body, limits, lambda: _client_gone(self.connection))
        count(self.path.rstrip("/"), payload)
        if "choices" in payload:  # what OpenAI clients expect of every completion
          payload = {"id": f"{'chatcmpl' if 'chat' in payload['object'] else 'cmpl'}-"
                           f"{uuid.uuid4().hex[:24]}", "created": int(time.time()), **payload}
        if stream and "choices" in payload:
          self._stream(payload, bool(options.get("include_usage")))
        else:
          self._send(200, payload)
      except RequestError as e:
        if e.code != 499:  # nobody is listening for a 499
          self._error(e.code, str(e))
        else:
          self.close_connection = True
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("serve-target: request failed")
        self._error(500, f"internal error: {type(e).__name__}")

  class Server(http.server.ThreadingHTTPServer):
    # clients that connect at once wait in the kernel's queue (a thread serves each
    # connection, one model call at a time) instead of being reset at the default 5
    request_queue_size = socket.SOMAXCONN
    daemon_threads = True

  server = Server((host, port), Handler)

  def inject_faults(*codes: int):
    with state_lock:
      faults.extend(codes)

  server.inject_faults = inject_faults
  return server


def serve_in_thread(server: http.server.ThreadingHTTPServer) -> threading.Thread:
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  return thread
