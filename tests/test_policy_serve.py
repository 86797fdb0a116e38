"""--mode=serve_policy: the policy's prompt, then the target's answer, behind an OpenAI API."""

import json
import os
import shutil
import urllib.error
import urllib.request

import pytest

from qpo_jax.policy import rounds
from qpo_jax.policy.serve import PolicyServer
from qpo_jax.targets import HttpTarget, build_target
from qpo_jax.targets.server import Limits, ModelServer, make_server, serve_in_thread
from qpo_jax.tasks import Example, get_task
from qpo_jax.utils import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-proxy-789"
QUERY = "Our team won the final match"


@pytest.fixture(scope="module")
def untrained():
  """A proxy over the tiny config's untrained policy: request handling needs no run."""
  config = load_config(os.path.join(ROOT, "configs", "tiny.py"))
  cfg, params, tok = rounds.policy_init(config)
  sampler = rounds.PromptSampler(cfg, params, tok, config.sample, config.train.query_len,
                                 config.train.prompt_len, round=0)
  target, task = build_target(config.target), get_task("topics")
  proxy = make_server(PolicyServer(sampler, task, target, "qpo-topics"), api_key=KEY,
                      limits=Limits(max_tokens=16))
  serve_in_thread(proxy)
  yield sampler, target, task, proxy
  proxy.shutdown()


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
  config = load_config(os.path.join(ROOT, "configs", "tiny.py"))
  sampler = rounds.prompt_sampler(config, work, 0)
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


def _expected(setup, query, max_tokens):
  config, work, _, target, task, _ = setup
  prompt = rounds.policy_prompts(config, work, 2, [query], collect=False, seed=0)[0][0]
  ex = Example(uid="q", fields={"text": query})
  return prompt, task.render(ex, prompt), target.generate([task.render(ex, prompt)],
                                                          max_tokens)[0].text


@pytest.mark.slow
def test_chat_and_completions_answer_with_the_policys_prompt(setup):
  proxy = setup[-1]
  prompt, rendered, answer = _expected(setup, QUERY, 8)
  status, out = _post(proxy, "/v1/chat/completions", {
      "model": "x", "max_tokens": 8, "messages": [
          {"role": "system", "content": "You are helpful."},
          {"role": "user", "content": "an earlier turn"},
          {"role": "assistant", "content": "ok"},
          {"role": "user", "content": QUERY}]})
  assert status == 200, out
  assert out["qpo"] == {"query": QUERY, "prompt": prompt, "rendered": rendered, "round": 2}
  assert out["choices"][0]["message"]["content"] == answer
  assert out["usage"]["completion_tokens"] <= 8
  status, out = _post(proxy, "/v1/completions", {"prompt": QUERY, "max_tokens": 8})
  assert status == 200 and out["choices"][0]["text"] == answer and out["qpo"]["prompt"] == prompt
  status, out = _post(proxy, "/v1/optimize", {"query": QUERY})
  assert status == 200 and out["prompt"] == prompt and out["rendered"] == rendered


@pytest.mark.slow
def test_proxy_in_front_of_serve_target_over_http(setup, monkeypatch):
  """policy -> HTTP backend -> our serve_target: the same answer as the local target."""
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
    assert out["choices"][0]["message"]["content"] == _expected(setup, QUERY, 8)[2]
  finally:
    proxy.shutdown()
    backend.shutdown()


@pytest.mark.parametrize("path,body,code,words", [
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}]}, 400,
     "no user message"),
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


def test_key_and_task_checks(untrained):
  sampler, target, _, proxy = untrained
  status, out = _post(proxy, "/v1/optimize", {"query": QUERY}, key="sk-wrong")
  assert status == 401
  with pytest.raises(ValueError, match="serve_policy takes one text per query"):
    PolicyServer(sampler, get_task("boolq"), target, "x")
