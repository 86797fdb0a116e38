"""QPO inside a DSPy program: a `dspy.Predict` whose instruction the policy writes per query.

DSPy optimisers (MIPROv2, GEPA, ...) choose one instruction for a whole task. A trained
qpo_jax policy writes one for each query; `QPOPredict` puts it in a DSPy program:

  import dspy, qpo_jax
  from qpo_jax.dspy_adapter import QPOPredict, RemotePolicy

  dspy.configure(lm=dspy.LM("openai/smollm2", api_base="http://127.0.0.1:8000/v1",
                            api_key="local"))   # any LM DSPy speaks to
  policy = qpo_jax.load_policy(qpo_jax.load_config("quickstart"), "/tmp/qpo_quickstart")
  classify = QPOPredict("tweet -> emotion", policy)   # or RemotePolicy("http://...:8001")
  classify(tweet="I just got the job, best day ever!")  # .emotion, .qpo_prompt

The policy reads the field that holds the query (`query_field`, default: the signature's
only input field); `prompts(queries)` is all it needs, so a trained `qpo_jax.Policy` in
this process or `RemotePolicy`, a `serve_policy` proxy's `/v1/optimize`, both serve.
DSPy is imported only here; `pip install dspy` to use it.
"""

from __future__ import annotations

import json
from typing import Protocol, Sequence
import urllib.request

import dspy


class PromptWriter(Protocol):
  def prompts(self, queries: Sequence[str]) -> list[list[str]]: ...


class RemotePolicy:
  """A `serve_policy` proxy's `/v1/optimize` as a policy: one request per query."""

  def __init__(self, base_url: str, api_key: str = "", timeout_s: float = 120.0):
    self.url = base_url.rstrip("/").removesuffix("/v1") + "/v1/optimize"
    self.api_key, self.timeout_s = api_key, timeout_s

  def prompts(self, queries: Sequence[str]) -> list[list[str]]:
    out = []
    for q in queries:
      headers = {"Content-Type": "application/json"}
      if self.api_key:
        headers["Authorization"] = f"Bearer {self.api_key}"
      request = urllib.request.Request(self.url, json.dumps({"query": q}).encode(), headers)
      with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
        out.append([json.loads(response.read())["prompt"]])
    return out


class QPOPredict(dspy.Module):
  """`dspy.Predict(signature)` with the instruction replaced, per call, by the policy's
  prompt for that call's query; the prediction carries it as `qpo_prompt`."""

  def __init__(self, signature, policy: PromptWriter, query_field: str | None = None,
               **config):
    super().__init__()
    self.signature = dspy.ensure_signature(signature)
    inputs = list(self.signature.input_fields)
    if query_field is None:
      if len(inputs) != 1:
        raise ValueError(f"the signature has the input fields {inputs}; name the one that "
                         "holds the query (query_field=...)")
      query_field = inputs[0]
    if query_field not in inputs:
      raise ValueError(f"query_field={query_field!r} is not an input field of {inputs}")
    self.policy, self.query_field, self.config = policy, query_field, config

  def forward(self, **inputs):
    prompt = self.policy.prompts([str(inputs[self.query_field])])[0][0]
    # the empty prompt is "no instruction": the signature's own (DSPy's default) stays
    signature = self.signature.with_instructions(prompt) if prompt.strip() else self.signature
    predict = dspy.Predict(signature, **self.config)
    prediction = predict(**inputs)
    prediction.qpo_prompt = prompt
    return prediction
