"""--mode=serve_policy: the policy's prompt, then the target's answer, behind an OpenAI API."""

import json
import shutil
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from qpo_jax import rounds
from qpo_jax.context import Run
from qpo_jax.policy.serve import PolicyServer
from qpo_jax.targets import HttpTarget, LocalTarget, build_target
from qpo_jax.targets.server import Limits, ModelServer, make_server, serve_in_thread
from qpo_jax.tasks import Example, get_task
from tests.conftest import untrained_proxy

from tests.helpers import tiny_config
KEY = "sk-proxy-789"
QUERY = "Our team won the final match"


@pytest.fixture(scope="module")
def untrained():
  """A proxy over the tiny config's untrained policy: request handling needs no run."""
  sampler, target, task, proxy = untrained_proxy(KEY, max_tokens=16)
  yield sampler, target, task, proxy
  proxy.shutdown()


@pytest.mark.integration
def test_optimize_route_gives_the_samplers_greedy_prompt(untrained):
  sampler, _, task, proxy = untrained
  prompt = sampler([QUERY], collect=False, seed=0)[0][0]
  status, out = _post(proxy, "/v1/optimize", {"query": f"  {QUERY} "})
  assert status == 200, out
  assert (out["query"], out["prompt"], out["round"]) == (QUERY, prompt, 0)
  assert out["rendered"] == task.render(Example(uid="q", fields={"text": QUERY}), prompt)


@pytest.fixture(scope="module")
def setup(tiny_run, tmp_path_factory):
  work = str(tmp_path_factory.mktemp("serve") / "work")
  shutil.copytree(tiny_run[0], work)
  config = tiny_config()
  sampler = rounds.prompt_sampler(Run(config, work), 0)
  target = build_target(config.target)
  task = get_task("topics")
  proxy = make_server(PolicyServer(sampler, task, target, "qpo-topics"), api_key=KEY,
                      limits=Limits(max_tokens=16))
  serve_in_thread(proxy)
  yield config, work, sampler, target, task, proxy
  proxy.shutdown()


def _post(srv, path, body, key=KEY):
  host, port = srv.server_address[:2]
  req = urllib.request.Request(f"http://{host}:{port}{path}", json.dumps(body).encode(),
                               {"Authorization": f"Bearer {key}",
                                "Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=120) as resp:
      return resp.status, json.loads(resp.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _expected(setup, query, target=None):
  """(prompt, rendered text, the target's likeliest option, option NLLs) done by hand."""
  config, work, _, default, task, _ = setup
  target = target or default
  prompt = rounds.prompt_sampler(Run(config, work), 2)([query], collect=False, seed=0)[0][0]
  ex = Example(uid="q", fields={"text": query})
  rendered = task.render(ex, prompt)
  nll, _ = target.score_options([rendered], [list(task.verbalizers)])
  nll = [float(x) for x in np.asarray(nll)[0]]
  return prompt, rendered, task.verbalizers[int(np.argmin(nll))], nll


@pytest.mark.integration
def test_chat_and_completions_answer_with_the_label_the_evaluation_would(setup):
  """A choice task's reply is the option the target finds likeliest after the policy's
  prompt (as the evaluation scores), and the response says so."""
  proxy = setup[-1]
  prompt, rendered, label, nll = _expected(setup, QUERY)
  status, out = _post(proxy, "/v1/chat/completions", {
      "model": "x", "max_tokens": 8, "temperature": 0, "messages": [
          {"role": "user", "content": "an earlier turn"},
          {"role": "assistant", "content": "ok"},
          {"role": "user", "content": QUERY}]})
  assert status == 200, out
  assert out["choices"][0]["message"]["content"] == label and label in setup[4].verbalizers
  qpo = out["qpo"]
  assert (qpo["query"], qpo["prompt"], qpo["rendered"], qpo["round"]) == (QUERY, prompt,
                                                                          rendered, 2)
  assert qpo["options"] == list(setup[4].verbalizers)
  np.testing.assert_allclose(qpo["option_nll"], nll, atol=1e-5)
  assert "lowest mean NLL under the target" in qpo["answer"]
  assert out["id"].startswith("chatcmpl-") and abs(out["created"] - time.time()) < 300
  status, out = _post(proxy, "/v1/completions", {"prompt": QUERY, "max_tokens": 8})
  assert status == 200 and out["choices"][0]["text"] == label and out["qpo"]["prompt"] == prompt
  assert out["id"].startswith("cmpl-")
  status, out = _post(proxy, "/v1/optimize", {"query": QUERY})
  assert status == 200 and out["prompt"] == prompt and out["rendered"] == rendered


@pytest.mark.integration
def test_proxy_in_front_of_serve_target_over_http(setup, monkeypatch):
  """policy -> HTTP backend -> our serve_target: the same answer as the local target (raw
  text, as completions endpoints score it)."""
  _, _, sampler, target, task, _ = setup
  backend = make_server(ModelServer(target.lm, "tiny"))
  serve_in_thread(backend)
  host, port = backend.server_address[:2]
  remote = HttpTarget(f"http://{host}:{port}/v1", "tiny", api_key_env="QPO_UNSET_KEY")
  proxy = make_server(PolicyServer(sampler, task, remote, "qpo-topics"))
  serve_in_thread(proxy)
  try:
    status, out = _post(proxy, "/v1/chat/completions",
                        {"max_tokens": 8, "messages": [{"role": "user", "content": QUERY}]})
    assert status == 200, out
    raw = LocalTarget(target.lm, chat=False, batch_size=4)
    assert out["choices"][0]["message"]["content"] == _expected(setup, QUERY, raw)[2]
  finally:
    proxy.shutdown()
    backend.shutdown()


@pytest.mark.integration
def test_a_generative_task_gets_the_targets_greedy_reply(untrained):
  sampler, target, _, _ = untrained
  task = get_task("arithmetic")
  proxy = make_server(PolicyServer(sampler, task, target, "qpo-arithmetic"),
                      limits=Limits(max_tokens=16))
  serve_in_thread(proxy)
  try:
    status, out = _post(proxy, "/v1/chat/completions",
                        {"max_tokens": 5, "messages": [{"role": "user", "content": "2 + 3"}]})
    assert status == 200, out
    prompt = out["qpo"]["prompt"]
    gen = target.generate([task.render(Example(uid="q", fields={"question": "2 + 3"}), prompt)],
                          5)[0]
    assert out["choices"][0]["message"]["content"] == gen.text
    assert out["choices"][0]["finish_reason"] == ("length" if gen.generated_tokens == 5
                                                  else "stop")
    assert out["qpo"]["answer"] == "the target's greedy reply"
  finally:
    proxy.shutdown()


@pytest.mark.parametrize("path,body,code,words", [
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x"}]}, 400,
     "no user message"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "hi"}]}, 400,
     "this proxy writes the instruction itself"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "temperature": 0.7}, 400, "'temperature' must be 0 or absent"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "stream": "yes"}, 400, "'stream' must be true or false"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}, 400,
     "must be a non-empty string"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 10**9}, 400, "outside [1, 16]"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "'prompt' must be a non-empty string"),
    ("/v1/optimize", {"query": "x" * 10_000}, 400, "characters; this server takes at most"),
    ("/v1/optimize", {}, 400, "'query' must be a non-empty string"),
])
def test_bad_requests_get_4xx(untrained, path, body, code, words):
  status, out = _post(untrained[-1], path, body)
  assert status == code and words in out["error"]["message"], out


@pytest.mark.integration
def test_key_and_task_checks(untrained):
  sampler, target, _, proxy = untrained
  status, out = _post(proxy, "/v1/optimize", {"query": QUERY}, key="sk-wrong")
  assert status == 401
  with pytest.raises(ValueError, match="serve_policy takes one text per query"):
    PolicyServer(sampler, get_task("boolq"), target, "x")
