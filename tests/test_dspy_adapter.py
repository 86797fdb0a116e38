"""QPO from DSPy: the policy's per-query prompt becomes the instruction DSPy sends."""

import pytest

dspy = pytest.importorskip("dspy")  # the test extra installs it

from dspy.utils import DummyLM  # noqa: E402

from qpo_jax.dspy_adapter import QPOPredict, RemotePolicy  # noqa: E402
from tests.conftest import untrained_proxy  # noqa: E402

class Rule:
  """A stand-in policy: its prompt names the query's length, so each query gets its own."""

  def __init__(self):
    self.asked = []

  def prompts(self, queries):
    self.asked += list(queries)
    return [[f"Label the emotion of this {len(q.split())}-word tweet."] for q in queries]


def _system(lm):
  return next(m["content"] for m in lm.history[-1]["messages"] if m["role"] == "system")


def test_each_call_sends_the_policys_prompt_for_its_query():
  lm = DummyLM([{"emotion": "Joy"}, {"emotion": "Anger"}])
  policy = Rule()
  classify = QPOPredict("tweet -> emotion", policy)
  with dspy.context(lm=lm):
    first = classify(tweet="I just got the job")
    assert "Label the emotion of this 5-word tweet." in _system(lm)
    second = classify(tweet="Stuck in traffic again")
    assert "Label the emotion of this 4-word tweet." in _system(lm)
  assert (first.emotion, second.emotion) == ("Joy", "Anger")
  assert first.qpo_prompt == "Label the emotion of this 5-word tweet."
  assert policy.asked == ["I just got the job", "Stuck in traffic again"]


def test_the_query_field_must_be_named_when_there_are_several():
  with pytest.raises(ValueError, match=r"input fields \['passage', 'question'\]; name the one"):
    QPOPredict("passage, question -> answer", Rule())
  with pytest.raises(ValueError, match="query_field='text' is not an input field"):
    QPOPredict("passage, question -> answer", Rule(), query_field="text")
  assert QPOPredict("passage, question -> answer", Rule(), query_field="question")


@pytest.mark.integration
def test_a_serve_policy_proxy_writes_the_instruction():
  sampler, _, _, proxy = untrained_proxy("sk-d", max_tokens=8)
  try:
    host, port = proxy.server_address[:2]
    remote = RemotePolicy(f"http://{host}:{port}/v1", api_key="sk-d")
    query = "Our team won the final match"
    expected = sampler([query], collect=False, seed=0)[0][0]
    assert remote.prompts([query]) == [[expected]]
    lm = DummyLM([{"topic": "Sports"}])
    with dspy.context(lm=lm):
      got = QPOPredict("sentence -> topic", remote)(sentence=query)
    assert got.qpo_prompt == expected and got.topic == "Sports"
    assert expected in _system(lm)
  finally:
    proxy.shutdown()
