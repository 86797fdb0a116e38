"""`serve-target`: a small OpenAI-compatible server in front of a local JAX model.

Endpoints: GET /v1/models, POST /v1/completions (prompt: str or list; echo;
logprobs with tokens / token_logprobs / text_offset; greedy or sampled
continuation of max_tokens) and POST /v1/chat/completions (the model's chat
template; logprobs and top_logprobs of the generated tokens). Enough for the
HTTP backend, vLLM-style clients and a quick curl; one request runs on the
model at a time (requests are accepted concurrently).

For testing clients, `inject_faults(429, 500, ...)` makes the next requests
fail with those statuses and `delay_s` delays every response.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from qpo_jax import decoding, scoring
from qpo_jax.decoding import encode
from qpo_jax.models.config import ModelConfig
from qpo_jax.models.registry import LanguageModel
from qpo_jax.models.transformer import Transformer


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
    self.lm, self.model_name, self.batch_size = lm, model_name, batch_size
    tok = lm.tokenizer
    self.eos_ids = decoding.stop_ids(tok)
    self.lock = threading.Lock()

  def encode(self, text: str) -> tuple[list[int], list[int]]:
    return encode(self.lm.tokenizer, text, with_offsets=True)

  def continue_ids(self, seqs: list[list[int]], max_tokens: int, temperature: float,
                   top_p: float, seed: int) -> list[list[int]]:
    if max_tokens <= 0:
      return [[] for _ in seqs]
    return decoding.generate_ids(self.lm, seqs, max_new_tokens=int(max_tokens),
                                 eos_ids=self.eos_ids, batch_size=self.batch_size,
                                 length_multiple=32, seed=seed, temperature=float(temperature),
                                 top_p=float(top_p))

  def logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
    return scoring.sequence_logprobs(self.lm, seqs, batch_size=self.batch_size)

  def top(self, seq: list[int], start: int, k: int) -> list[list[tuple[int, float]]]:
    """Top-k next-token log-probabilities at positions start-1 .. len-2 (the generated tokens)."""
    ids, mask = decoding.pad_batch([seq], decoding.pad_id(self.lm.tokenizer), side="right",
                                   multiple=32)
    values, indices = _top_logprobs(self.lm.cfg, self.lm.params, jnp.asarray(ids),
                                    jnp.asarray(mask), k)
    values, indices = np.asarray(values[0]), np.asarray(indices[0])
    return [list(zip(indices[p].tolist(), values[p].tolist())) for p in range(start - 1, len(seq) - 1)]

  def piece(self, token_id: int) -> str:
    return self.lm.tokenizer.decode([token_id])

  # --- endpoints ----------------------------------------------------------

  def completions(self, body: dict[str, Any]) -> dict[str, Any]:
    prompts = body.get("prompt", "")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
      raise ValueError("'prompt' must be a string or a list of strings")
    encoded = [self.encode(p) for p in prompts]
    with self.lock:
      new = self.continue_ids([e[0] for e in encoded], int(body.get("max_tokens", 16)),
                              float(body.get("temperature", 1.0)), float(body.get("top_p", 1.0)),
                              int(body.get("seed", 0)))
      want_lp = body.get("logprobs") is not None
      lps = self.logprobs([e[0] + n for e, n in zip(encoded, new)]) if want_lp else None
    choices = []
    for i, ((ids, offsets), gen) in enumerate(zip(encoded, new)):
      text = self.lm.tokenizer.decode(gen, skip_special_tokens=True)
      choice = {"index": i, "text": (prompts[i] if body.get("echo") else "") + text,
                "finish_reason": "length" if len(gen) >= int(body.get("max_tokens", 16)) else
                "stop", "logprobs": None}
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

  def chat(self, body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
      raise ValueError("'messages' must be a non-empty list")
    tok = self.lm.tokenizer
    if getattr(tok, "chat_template", None):
      text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
      text = "\n\n".join(m["content"] for m in messages)
    ids, _ = self.encode(text)
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
    k = int(body.get("top_logprobs") or 0)
    with self.lock:
      gen = self.continue_ids([ids], max_tokens, float(body.get("temperature", 1.0)),
                              float(body.get("top_p", 1.0)), int(body.get("seed", 0)))[0]
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
                         "finish_reason": "length" if len(gen) >= max_tokens else "stop",
                         "logprobs": {"content": content} if content is not None else None}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(gen),
                      "total_tokens": len(ids) + len(gen)}}


def make_server(model: ModelServer, host: str = "127.0.0.1", port: int = 0,
                api_key: str = "", delay_s: float = 0.0) -> http.server.ThreadingHTTPServer:
  """An HTTP server (not yet serving); `server.server_address` has the bound port."""
  faults: list[int] = []
  faults_lock = threading.Lock()

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; absl logging instead of stderr lines
      logging.debug("serve-target: " + fmt, *args)

    def _send(self, code: int, payload: dict[str, Any]):
      data = json.dumps(payload).encode()
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      if code == 429:
        self.send_header("Retry-After", "0")
      self.end_headers()
      self.wfile.write(data)

    def _error(self, code: int, message: str):
      self._send(code, {"error": {"message": message, "code": code}})

    def _authorized(self) -> bool:
      if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
        self._error(401, "missing or wrong API key")
        return False
      return True

    def do_GET(self):  # noqa: N802
      if not self._authorized():
        return
      if self.path.rstrip("/") == "/v1/models":
        self._send(200, {"object": "list", "data": [{"id": model.model_name, "object": "model"}]})
      else:
        self._error(404, f"no route {self.path}")

    def do_POST(self):  # noqa: N802
      length = int(self.headers.get("Content-Length") or 0)
      raw = self.rfile.read(length)
      if not self._authorized():
        return
      with faults_lock:
        fault = faults.pop(0) if faults else None
      if delay_s:
        time.sleep(delay_s)
      if fault:
        self._error(fault, "injected fault")
        return
      route = {"/v1/completions": model.completions,
               "/v1/chat/completions": model.chat}.get(self.path.rstrip("/"))
      if route is None:
        self._error(404, f"no route {self.path}")
        return
      try:
        body = json.loads(raw or b"{}")
        self._send(200, route(body))
      except (ValueError, KeyError, TypeError) as e:
        self._error(400, f"bad request: {e}")

  server = http.server.ThreadingHTTPServer((host, port), Handler)
  server.daemon_threads = True

  def inject_faults(*codes: int):
    with faults_lock:
      faults.extend(codes)

  server.inject_faults = inject_faults
  return server


def serve_in_thread(server: http.server.ThreadingHTTPServer) -> threading.Thread:
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  return thread
