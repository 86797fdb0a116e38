"""`serve_policy`: a prompt-optimising proxy in front of any target, OpenAI-compatible.

For each request the last user message (chat) or the prompt (completions) is
the query; the trained policy writes its prompt (greedy, conditioned on R*),
the task's template renders query and prompt, and the configured target (local
JAX model, our `serve_target`, or any OpenAI-compatible server through the HTTP
backend) answers as the evaluation scores it: for a choice task the option it
finds likeliest (the reply is the label, e.g. "Joy"), for a generative task its
greedy reply. The reply is in the OpenAI format, with a `qpo` field holding the
query, the prompt, the text the target saw and how the answer was chosen (with
each option's NLL); the prompt is also logged. `POST /v1/optimize`
(`{"query": ...}`) returns only the prompt. A system message or a non-zero
`temperature` is refused with a 400 saying why (the policy writes the
instruction; the answer is the evaluation's).

It runs behind the same handler as `serve_target` (server.py), so it has the
same bounds: the key checked before the body is read, capped body, prompt and
`max_tokens`, a time limit for waiting on the model, 4xx JSON errors.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from absl import logging
import numpy as np

from qpo_jax.policy.sampling import PromptSampler
from qpo_jax.targets.server import Limits, RequestError, hold, int_field
from qpo_jax.tasks import CHOICE, Example, Task
from qpo_jax.targets import Target


class PolicyServer:
  """Routes of the proxy: the policy's prompt, then the target's answer."""

  def __init__(self, sampler: PromptSampler, task: Task, target: Target, model_name: str):
    if len(task.field_names) != 1:
      raise ValueError(f"serve_policy takes one text per query; task {task.name!r} has the "
                       f"fields {[k for k, _ in task.field_names]}")
    self.sampler, self.task, self.target = sampler, task, target
    self.model_name, self.round = model_name, sampler.round
    self.lock = threading.Lock()  # the policy and a local target run one request at a time

  def routes(self) -> dict[str, Callable[..., dict[str, Any]]]:
    return {"/v1/chat/completions": self.chat, "/v1/completions": self.completions,
            "/v1/optimize": self.optimize}

  def _query(self, text: Any, what: str, limits: Limits) -> Example:
    if not isinstance(text, str) or not text.strip():
      raise RequestError(400, f"{what} must be a non-empty string")
    if len(text) > 4 * limits.max_prompt_tokens:  # chars; the policy reads train.query_len tokens
      raise RequestError(400, f"{what} is {len(text)} characters; this server takes at most "
                              f"{4 * limits.max_prompt_tokens}")
    return Example(uid="request", fields={self.task.field_names[0][0]: text.strip()})

  def _prompt(self, ex: Example) -> str:
    prompt = self.sampler([ex.query], collect=False, seed=0)[0][0]
    logging.info("serve_policy: prompt %r for query %r", prompt, ex.query[:80])
    return prompt

  def _answer(self, ex: Example, body: dict[str, Any], limits: Limits,
              stop: Callable[[], bool], default_max_tokens: int) -> dict[str, Any]:
    """The policy's prompt and the target's answer: for a choice task the option the
    target finds likeliest (the evaluation's own scoring), else its greedy reply."""
    temperature = body.get("temperature")
    if temperature not in (None, 0, 0.0):
      raise RequestError(400, "this proxy answers as the evaluation does (greedily, or by the "
                              "likeliest option); 'temperature' must be 0 or absent")
    max_tokens = int_field(body, "max_tokens", min(default_max_tokens, limits.max_tokens), 1,
                           limits.max_tokens)
    with hold(self.lock, limits, stop):
      prompt = self._prompt(ex)
      text = self.task.render(ex, prompt)
      qpo = {"query": ex.query, "prompt": prompt, "rendered": text, "round": self.round}
      if self.task.kind == CHOICE:
        options = list(self.task.options(ex))
        nll, tokens = self.target.score_options([text], [options])
        nll = [float(x) for x in np.asarray(nll)[0]]
        answer = options[int(np.argmin(nll))]
        qpo.update(answer="the task's option with the lowest mean NLL under the target, as "
                          "the evaluation scores it", options=options, option_nll=nll)
        return {"text": answer, "finish_reason": "stop", "qpo": qpo,
                "usage": {"prompt_tokens": int(tokens), "completion_tokens": 0,
                          "total_tokens": int(tokens)}}
      gen = self.target.generate([text], max_tokens)[0]
    qpo["answer"] = "the target's greedy reply"
    return {"text": gen.text, "qpo": qpo,
            "finish_reason": "length" if gen.generated_tokens >= max_tokens else "stop",
            "usage": {"prompt_tokens": gen.prompt_tokens,
                      "completion_tokens": gen.generated_tokens,
                      "total_tokens": gen.prompt_tokens + gen.generated_tokens}}

  def chat(self, body: dict[str, Any], limits: Limits, stop: Callable[[], bool]
           ) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
      raise RequestError(400, "'messages' must be a non-empty list")
    if any(isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages):
      raise RequestError(400, "this proxy writes the instruction itself (the policy's prompt); "
                              "send the query as a user message, without a system message")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
      raise RequestError(400, "'messages' has no user message (its content is the query)")
    ex = self._query(users[-1].get("content"), "the last user message's content", limits)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
      body = dict(body, max_tokens=body["max_completion_tokens"])
    out = self._answer(ex, body, limits, stop, default_max_tokens=256)
    return {"object": "chat.completion", "model": self.model_name, "qpo": out["qpo"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                         "finish_reason": out["finish_reason"], "logprobs": None}],
            "usage": out["usage"]}

  def completions(self, body: dict[str, Any], limits: Limits, stop: Callable[[], bool]
                  ) -> dict[str, Any]:
    ex = self._query(body.get("prompt"), "'prompt'", limits)
    out = self._answer(ex, body, limits, stop, default_max_tokens=16)
    return {"object": "text_completion", "model": self.model_name, "qpo": out["qpo"],
            "choices": [{"index": 0, "text": out["text"], "finish_reason": out["finish_reason"],
                         "logprobs": None}],
            "usage": out["usage"]}

  def optimize(self, body: dict[str, Any], limits: Limits, stop: Callable[[], bool]
               ) -> dict[str, Any]:
    ex = self._query(body.get("query"), "'query'", limits)
    with hold(self.lock, limits, stop):
      prompt = self._prompt(ex)
    return {"object": "qpo.prompt", "model": self.model_name, "query": ex.query,
            "prompt": prompt, "rendered": self.task.render(ex, prompt), "round": self.round}
