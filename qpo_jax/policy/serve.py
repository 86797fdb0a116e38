"""`serve_policy`: a prompt-optimising proxy in front of any target, OpenAI-compatible.

For each request the last user message (chat) or the prompt (completions) is
the query; the trained policy writes its prompt (greedy, conditioned on R*),
the task's template renders query and prompt, and the configured target (local
JAX model, our `serve_target`, or any OpenAI-compatible server through the HTTP
backend) answers. The reply is the target's, in the OpenAI format, with a `qpo`
field holding the query, the prompt and the text the target saw; the prompt is
also logged. `POST /v1/optimize` (`{"query": ...}`) returns only the prompt.

It runs behind the same handler as `serve_target` (server.py), so it has the
same bounds: the key checked before the body is read, capped body, prompt and
`max_tokens`, a time limit for waiting on the model, 4xx JSON errors.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from absl import logging

from qpo_jax.policy.rounds import PromptSampler
from qpo_jax.targets.server import Limits, RequestError, hold, int_field
from qpo_jax.tasks import Example, Task
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
              stop: Callable[[], bool], default_max_tokens: int) -> tuple[dict[str, Any], Any]:
    max_tokens = int_field(body, "max_tokens", min(default_max_tokens, limits.max_tokens), 1,
                           limits.max_tokens)
    with hold(self.lock, limits, stop):
      prompt = self._prompt(ex)
      text = self.task.render(ex, prompt)
      gen = self.target.generate([text], max_tokens)[0]
    qpo = {"query": ex.query, "prompt": prompt, "rendered": text, "round": self.round}
    return qpo, gen

  @staticmethod
  def _usage(gen) -> dict[str, int]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.generated_tokens,
            "total_tokens": gen.prompt_tokens + gen.generated_tokens}

  def chat(self, body: dict[str, Any], limits: Limits, stop: Callable[[], bool]
           ) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
      raise RequestError(400, "'messages' must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
      raise RequestError(400, "'messages' has no user message (its content is the query)")
    ex = self._query(users[-1].get("content"), "the last user message's content", limits)
    qpo, gen = self._answer(ex, body, limits, stop, default_max_tokens=256)
    return {"object": "chat.completion", "model": self.model_name, "qpo": qpo,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": self._usage(gen)}

  def completions(self, body: dict[str, Any], limits: Limits, stop: Callable[[], bool]
                  ) -> dict[str, Any]:
    ex = self._query(body.get("prompt"), "'prompt'", limits)
    qpo, gen = self._answer(ex, body, limits, stop, default_max_tokens=16)
    return {"object": "text_completion", "model": self.model_name, "qpo": qpo,
            "choices": [{"index": 0, "text": gen.text, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": self._usage(gen)}

  def optimize(self, body: dict[str, Any], limits: Limits, stop: Callable[[], bool]
               ) -> dict[str, Any]:
    ex = self._query(body.get("query"), "'query'", limits)
    with hold(self.lock, limits, stop):
      prompt = self._prompt(ex)
    return {"object": "qpo.prompt", "model": self.model_name, "query": ex.query,
            "prompt": prompt, "rendered": self.task.render(ex, prompt), "round": self.round}
