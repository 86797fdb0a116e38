"""Both servers through the `openai` Python client on loopback: fields, finish reasons, streams."""

import openai
import pytest

from qpo_jax.checkpoints.registry import load_model
from qpo_jax.targets.server import Limits, ModelServer, make_server, serve_in_thread
from qpo_jax.tasks import get_task
from tests.conftest import untrained_proxy

KEY = "sk-openai-client-1"


def _client(srv):
  host, port = srv.server_address[:2]
  return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=KEY, max_retries=0,
                       timeout=120)


@pytest.fixture(scope="module")
def target_server():
  lm = load_model({"name": "random", "preset": "tiny-llama", "tokenizer": "smollm2", "seed": 5})
  srv = make_server(ModelServer(lm, "tiny"), api_key=KEY, limits=Limits(max_tokens=32))
  serve_in_thread(srv)
  yield srv
  srv.shutdown()


@pytest.fixture(scope="module")
def proxy():
  srv = untrained_proxy(KEY, max_tokens=16)[-1]
  yield srv
  srv.shutdown()


@pytest.mark.integration
def test_serve_target_chat_and_completions(target_server):
  client = _client(target_server)
  assert [m.id for m in client.models.list()] == ["tiny"]
  chat = client.chat.completions.create(model="tiny", max_tokens=6, temperature=0,
                                        messages=[{"role": "user", "content": "Say hi"}])
  assert chat.id.startswith("chatcmpl-") and chat.created > 0 and chat.model == "tiny"
  choice = chat.choices[0]
  assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
  # a random model rarely stops by itself: 6 tokens means max_tokens cut it
  n = chat.usage.completion_tokens
  assert choice.finish_reason == ("length" if n == 6 else "stop") and n <= 6
  done = client.completions.create(model="tiny", prompt="One, two,", max_tokens=4,
                                   temperature=0)
  assert done.id.startswith("cmpl-") and done.choices[0].finish_reason in ("length", "stop")


@pytest.mark.integration
def test_serve_target_streams_the_same_answer(target_server):
  client = _client(target_server)
  kw = dict(model="tiny", max_tokens=6, temperature=0,
            messages=[{"role": "user", "content": "Count to three"}])
  whole = client.chat.completions.create(**kw)
  chunks = list(client.chat.completions.create(
      stream=True, stream_options={"include_usage": True}, **kw))
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == whole.choices[0].message.content
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
      whole.choices[0].finish_reason
  assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
  assert all(c.object == "chat.completion.chunk" for c in chunks)
  assert len({c.id for c in chunks}) == 1
  streamed = list(_client(target_server).completions.create(
      model="tiny", prompt="One, two,", max_tokens=4, temperature=0, stream=True))
  whole = _client(target_server).completions.create(model="tiny", prompt="One, two,",
                                                    max_tokens=4, temperature=0)
  assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


@pytest.mark.integration
def test_proxy_answers_a_label_and_refuses_what_it_does_not_do(proxy):
  client = _client(proxy)
  chat = client.chat.completions.create(model="qpo-topics", messages=[
      {"role": "user", "content": "Our team won the final match"}])
  assert chat.choices[0].message.content in get_task("topics").verbalizers
  assert chat.choices[0].finish_reason == "stop"
  streamed = list(client.chat.completions.create(model="qpo-topics", stream=True, messages=[
      {"role": "user", "content": "Our team won the final match"}]))
  assert "".join(c.choices[0].delta.content or "" for c in streamed) == \
      chat.choices[0].message.content
  with pytest.raises(openai.BadRequestError, match="writes the instruction itself"):
    client.chat.completions.create(model="qpo-topics", messages=[
        {"role": "system", "content": "You are a classifier."},
        {"role": "user", "content": "Our team won"}])
  with pytest.raises(openai.BadRequestError, match="'temperature' must be 0 or absent"):
    client.chat.completions.create(model="qpo-topics", temperature=0.9, messages=[
        {"role": "user", "content": "Our team won"}])
