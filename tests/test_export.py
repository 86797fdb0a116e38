"""--mode=export_policy: an HF-style directory our loader reads back bit for bit and whose
backbone transformers (PyTorch) runs to the same logits."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from qpo_jax import modes
from qpo_jax.checkpoints import export
from qpo_jax.context import Run
from qpo_jax.models.config import from_hf_config, preset
from qpo_jax.models.transformer import Transformer
from qpo_jax import rounds
from qpo_jax.policy import sampling
from qpo_jax.policy.model import init_policy
from tests.hf_reference import hf_logits

from tests.helpers import run_python, tiny_config


def _same(a, b):
  fa = jax.tree_util.tree_flatten_with_path(a)[0]
  fb = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(fa) == len(fb)
  for path, x in fa:
    y = fb[path]
    assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)), path


def _batch(vocab):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, (2, 12))
  mask = np.ones_like(ids, bool)
  mask[1, 9:] = False
  return ids, mask


@pytest.mark.integration
@pytest.mark.parametrize("cfg", [
    pytest.param(preset("tiny-llama"), id="llama"),
    pytest.param(preset("tiny-llama", tie_embeddings=True), id="llama-tied"),
    pytest.param(preset("tiny-llama", qkv_bias=True), id="qwen2"),
    pytest.param(preset("tiny-gpt2"), id="gpt2")])
def test_round_trip_is_exact_and_transformers_agrees(cfg, tmp_path):
  params = init_policy(cfg, jax.random.key(3))
  params = jax.tree_util.tree_map(  # non-trivial norms and biases, so layouts are really checked
      lambda x: x + 0.1 * jax.random.normal(jax.random.key(x.size), x.shape, x.dtype), params)
  directory = export.export_policy(str(tmp_path / "p"), cfg, params, None,
                                   {"target_return": 100.0, "query_len": 8, "prompt_len": 8})
  assert from_hf_config(export.to_hf_config(cfg)) == cfg
  cfg2, params2, _, meta = export.load_policy_dir(directory)
  assert cfg2 == cfg and meta["target_return"] == 100.0
  _same(params, params2)
  assert "R* = 100.0" in open(os.path.join(directory, "qpo", "README.md")).read()
  export.export_policy(directory, cfg, params, None, {})  # an earlier export: replaced
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("a user's file")
  with pytest.raises(FileExistsError, match="is not an exported QPO policy"):
    export.export_policy(str(mine), cfg, params, None, {})
  assert (mine / "notes.txt").read_text() == "a user's file"
  model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
  ids, mask = _batch(cfg.vocab_size)
  ours = Transformer(cfg).apply({"params": params["backbone"]}, jnp.asarray(ids),
                                jnp.asarray(mask), method=Transformer.lm)
  diff = np.abs(np.asarray(ours) - hf_logits(model, ids, mask))[mask]
  assert diff.max() < 1e-4, diff.max()


@pytest.mark.multiprocess
def test_export_mode_on_a_trained_run(tiny_run, tmp_path):
  work = str(tmp_path / "work")
  shutil.copytree(tiny_run[0], work)
  config = tiny_config()
  out = modes.export_policy(Run(config, work))
  assert out == os.path.join(work, "export", "round_2") and not os.path.exists(out + ".tmp")
  sampler = rounds.prompt_sampler(Run(config, work), 0)
  cfg, params, tok, meta = export.load_policy_dir(out)
  assert cfg == sampler.cfg and meta["round"] == 2 and meta["normalizer"]
  _same(sampler.params, params)
  assert tok("Weather today")["input_ids"] == sampler.tokenizer("Weather today")["input_ids"]
  queries = ["Heavy rain is expected all weekend", "Our team won the final match"]
  again = sampling.decode_prompts(cfg, params, tok, queries, target_return=100.0,
                                  query_len=config.train.query_len,
                                  prompt_len=config.train.prompt_len, seed=0)
  assert again == sampler(queries, collect=False, seed=0)
  script = os.path.join(out, "qpo", "generate_prompt.py")  # the policy in PyTorch, standalone
  r = subprocess.run([sys.executable, script, *queries], capture_output=True, text=True,
                     cwd=str(tmp_path), timeout=300, env={**os.environ, "PYTHONPATH": ""})
  assert r.returncode == 0, r.stderr[-2000:]
  assert [json.loads(ln)["prompt"] for ln in r.stdout.splitlines()] == [p[0] for p in again]
  assert "python qpo/generate_prompt.py" in open(os.path.join(out, "qpo", "README.md")).read()
  for root, _, files in os.walk(out):  # ordinary permissions: readable by others
    for f in files:
      assert os.stat(os.path.join(root, f)).st_mode & 0o777 == 0o644, f
  hf_cfg = json.load(open(os.path.join(out, "config.json")))
  assert hf_cfg["model_type"] == "llama" and hf_cfg["vocab_size"] == cfg.vocab_size
  config.export.dir = str(tmp_path / "elsewhere")
  assert modes.export_policy(Run(config, work)) == config.export.dir  # replaced atomically


@pytest.mark.multiprocess
def test_the_pipeline_does_not_import_torch():
  """Only the exported script needs PyTorch; importing it would put ~0.27 GiB into every
  run's memory (the quickstart has a 4 GB budget)."""
  code = ("import os, sys, main, qpo_jax.report, qpo_jax.loop, qpo_jax.modes, qpo_jax.api\n"
          "from qpo_jax.checkpoints import export\n"
          "assert os.path.isfile(export.GENERATE_SCRIPT), export.GENERATE_SCRIPT\n"
          "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))\n")
  proc = run_python(code)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]"
