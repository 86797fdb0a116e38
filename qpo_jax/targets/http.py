"""A target behind an OpenAI-compatible HTTP API (vLLM, TGI, OpenAI, `serve-target`).

* Math: `/v1/chat/completions`, greedy, with `logprobs` for the response NLL.
* Choice, scoring="completions" (exact): `/v1/completions` with `echo` and
  `logprobs`, one request per rendered prompt holding its K "prompt + option"
  texts; an option's mean NLL is taken over the tokens whose `text_offset`
  falls inside the option. The text is sent raw (no chat template), as
  completions endpoints expect; this matches the local backend with chat=False.
  Given the model's tokenizer (`chat_tokenizer`), the text is put in its chat
  template here and an option follows as the reply, as with chat=True.
* Choice, scoring="chat_first_token" (APIs without echo): one chat request with
  `max_tokens=1` and `top_logprobs=20`; an option's score is the log-probability
  of the listed token its text starts with, and an unlisted option gets the
  lowest listed value (an upper bound on its probability).

Requests run `concurrency` at a time, retry 429/5xx, timeouts, dropped
connections and malformed answers with exponential backoff (honouring
Retry-After), and fail with an error naming the URL and what was wrong. The API key comes from the environment variable named in the config and
never appears in logs, errors or `repr`.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence, TypeVar

from absl import logging
import numpy as np

from qpo_jax.tokens import chat_text
from qpo_jax.targets.local import Generation, option_text

RETRY_STATUS = (429, 500, 502, 503, 504)
T = TypeVar("T")


class TargetError(RuntimeError):
  """A request to the target failed for good; the message names the URL and why."""


class HttpTarget:
  """See the module docstring; `identity` keys the evaluation cache."""

  def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
               scoring: str = "completions", concurrency: int = 4, max_retries: int = 5,
               timeout_s: float = 60.0, backoff_s: float = 1.0, top_logprobs: int = 20,
               chat_tokenizer=None):
    if not base_url:
      raise ValueError("target.http.base_url is empty; e.g. http://127.0.0.1:8000/v1")
    if scoring not in ("completions", "chat_first_token"):
      raise ValueError(f"target.http.scoring={scoring!r} is not 'completions' or "
                       "'chat_first_token'")
    self.base_url = base_url.rstrip("/")
    self.model = model
    self.scoring = scoring
    self.concurrency = max(1, int(concurrency))
    self.max_retries = int(max_retries)
    self.timeout_s = float(timeout_s)
    self.backoff_s = float(backoff_s)
    self.top_logprobs = int(top_logprobs)
    self._key = os.environ.get(api_key_env, "") if api_key_env else ""
    self.chat_tokenizer = chat_tokenizer
    self.identity = f"http:{self.base_url}:{model}:{scoring}" + (":chat" if chat_tokenizer else "")
    self._warned_no_logprobs = False

  def __repr__(self) -> str:
    return f"HttpTarget({self.base_url!r}, model={self.model!r}, scoring={self.scoring!r})"

  def post(self, path: str, body: dict[str, Any], parse: Callable[[Any], T]) -> T:
    """POSTs JSON with retries and returns `parse(decoded response)`, or raises TargetError.

    429/5xx, timeouts, dropped connections and malformed answers (not JSON, or JSON
    that `parse` rejects with KeyError, IndexError, TypeError or ValueError) are retried
    with backoff; the last failure's error names the URL and what was wrong.
    """
    url = f"{self.base_url}/{path.lstrip('/')}"
    headers = {"Content-Type": "application/json"}
    if self._key:
      headers["Authorization"] = f"Bearer {self._key}"
    data = json.dumps(body).encode()
    attempts = self.max_retries + 1
    for attempt in range(attempts):
      wait = self.backoff_s * 2 ** attempt
      last = attempt == self.max_retries
      try:
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          raw = response.read()
        try:
          return parse(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          problem = f"the response is not JSON ({e}): {raw[:200]!r}"
        except (KeyError, IndexError, TypeError, ValueError) as e:
          problem = (f"the response lacks what an OpenAI-compatible server sends "
                     f"({type(e).__name__}: {e}): {raw[:200]!r}")
        if last:
          raise TargetError(f"POST {url}: {problem} ({attempts} attempts)")
        logging.warning("POST %s: %s; retry %d/%d", url, problem, attempt + 1, self.max_retries)
      except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        if e.code not in RETRY_STATUS or last:
          raise TargetError(f"POST {url} failed with HTTP {e.code}: {detail}") from None
        retry_after = e.headers.get("Retry-After")
        if retry_after and retry_after.replace(".", "", 1).isdigit():
          wait = float(retry_after)
        logging.warning("POST %s: HTTP %d, retry %d/%d in %.1fs", url, e.code, attempt + 1,
                        self.max_retries, wait)
      except (TimeoutError, socket.timeout, urllib.error.URLError, http.client.HTTPException,
              ConnectionError) as e:
        reason = getattr(e, "reason", e)
        dropped = isinstance(reason, (http.client.HTTPException, ConnectionError))
        if not dropped and not isinstance(reason, (TimeoutError, socket.timeout)):
          raise TargetError(f"POST {url} failed: {reason}") from None
        what = (f"the connection was dropped ({type(reason).__name__}: {reason})" if dropped
                else f"timed out after {self.timeout_s:g}s")
        if last:
          raise TargetError(f"POST {url}: {what} ({attempts} attempts)"
                            + ("" if dropped else "; raise target.http.timeout_s or check the server")
                            ) from None
        logging.warning("POST %s: %s, retry %d/%d", url, what, attempt + 1, self.max_retries)
      time.sleep(wait)
    raise AssertionError("unreachable")

  def _map(self, fn, items):
    with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
      return list(pool.map(fn, items))

  # --- choice tasks -------------------------------------------------------

  def _score_completions(self, item) -> tuple[list[float], int]:
    text, options = item
    chat = self.chat_tokenizer is not None
    text = chat_text(self.chat_tokenizer, text) if chat else text
    full = [text + option_text(o, chat, self.chat_tokenizer) for o in options]

    def parse(resp):
      choices = sorted(resp["choices"], key=lambda c: c.get("index", 0))
      if len(choices) != len(full):
        raise ValueError(f"{len(choices)} choices for {len(full)} prompts")
      nll = []
      for f, c in zip(full, choices):
        lp = c["logprobs"]
        vals = [v for v, off in zip(lp["token_logprobs"], lp["text_offset"])
                if len(text) <= off < len(f) and v is not None]
        if not vals:
          raise TargetError(f"{self.base_url}/completions: no scored tokens inside the option "
                            f"of {f[len(text):]!r}; does the server support echo with logprobs?")
        nll.append(-float(np.mean(vals)))
      return nll, int(resp.get("usage", {}).get("prompt_tokens", 0))

    return self.post("completions", {"model": self.model, "prompt": full, "max_tokens": 1,
                                      "echo": True, "logprobs": 0, "temperature": 0}, parse)

  def _score_first_token(self, item) -> tuple[list[float], int]:
    text, options = item

    def parse(resp):
      content = (resp["choices"][0].get("logprobs") or {}).get("content") or []
      if not content:
        raise TargetError(f"{self.base_url}/chat/completions returned no logprobs")
      listed = [(t["token"].strip().lower(), t["logprob"]) for t in content[0]["top_logprobs"]]
      floor = min(v for _, v in listed)
      nll = []
      for option in options:
        matches = [v for tok, v in listed if tok and option.strip().lower().startswith(tok)]
        nll.append(-max(matches) if matches else -floor)
      return nll, int(resp.get("usage", {}).get("prompt_tokens", 0))

    return self.post("chat/completions", {
        "model": self.model, "messages": [{"role": "user", "content": text}], "max_tokens": 1,
        "temperature": 0, "logprobs": True, "top_logprobs": self.top_logprobs}, parse)

  def score_options(self, user_texts: Sequence[str],
                    options: Sequence[Sequence[str]]) -> tuple[np.ndarray, int]:
    fn = self._score_completions if self.scoring == "completions" else self._score_first_token
    results = self._map(fn, list(zip(user_texts, options)))
    return np.asarray([r[0] for r in results], np.float32), sum(r[1] for r in results)

  # --- math tasks ---------------------------------------------------------

  def _generate_one(self, item) -> Generation:
    text, max_new_tokens = item

    def parse(resp):
      choice = resp["choices"][0]
      content = (choice.get("logprobs") or {}).get("content") or []
      usage = resp.get("usage", {})
      return (str(choice["message"]["content"] or ""),
              -float(np.mean([t["logprob"] for t in content])) if content else None,
              int(usage.get("prompt_tokens", 0)),
              int(usage.get("completion_tokens", len(content))))

    reply, nll, prompt_tokens, generated = self.post("chat/completions", {
        "model": self.model, "messages": [{"role": "user", "content": text}],
        "max_tokens": max_new_tokens, "temperature": 0, "logprobs": True}, parse)
    if nll is None:
      nll = 0.0
      if not self._warned_no_logprobs:
        logging.warning("%s returns no logprobs; response NLL is recorded as 0", self.base_url)
        self._warned_no_logprobs = True
    return Generation(reply, nll, prompt_tokens, generated)

  def generate(self, user_texts: Sequence[str], max_new_tokens: int) -> list[Generation]:
    return self._map(self._generate_one, [(t, max_new_tokens) for t in user_texts])
