"""The real embedded SmolLM2-135M-Instruct GGUF against transformers' own GGUF loader."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from qpo_jax import decoding
from qpo_jax.checkpoints.registry import load_tokenizer, smollm2_gguf_path
from qpo_jax.models.transformer import Transformer
from tests.helpers import SHARED_DATA as SHARED

SENTENCES = [
    "The capital of France is Paris, and the capital of Germany is",
    "I scored 12345 points in 2024! Not bad for a beginner.",
    "<|im_start|>user\nHow are you today?<|im_end|>\n<|im_start|>assistant\n",
    "@user Why does every Monday feel like this... #tired",
]


@pytest.fixture(scope="module")
def reference():
  path = smollm2_gguf_path()
  kw = dict(gguf_file=os.path.basename(path))
  model = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), dtype=torch.float32, **kw)
  tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), **kw)
  return model.eval(), tok


@pytest.mark.real_model
def test_tokenizer_matches_transformers_gguf(smollm2, reference):
  # the model's load and a tokenizer-only load (the policy's) share one tokenizer object
  assert smollm2.tokenizer is load_tokenizer({"name": "smollm2-135m-instruct"})
  for s in SENTENCES:
    assert smollm2.tokenizer(s)["input_ids"] == reference[1](s)["input_ids"], s
  ids = smollm2.tokenizer(SENTENCES[1])["input_ids"]
  assert smollm2.tokenizer.decode(ids) == SENTENCES[1]


@pytest.mark.real_model
def test_logits_match_transformers_gguf(smollm2, reference):
  m = Transformer(smollm2.cfg)
  for s in SENTENCES:
    ids = np.array([smollm2.tokenizer(s)["input_ids"]])
    ours = np.asarray(m.apply({"params": smollm2.params}, jnp.asarray(ids),
                              jnp.ones(ids.shape, bool), method=m.lm))
    with torch.no_grad():
      theirs = reference[0](torch.tensor(ids)).logits.numpy()
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
    assert np.abs(ours - theirs).max() < 2e-3, (s, np.abs(ours - theirs).max())


@pytest.mark.real_model
def test_padded_batch_equals_single_rows(smollm2):
  """Scoring the real model in a left/right padded batch gives each row's solo logits."""
  m = Transformer(smollm2.cfg)
  seqs = [smollm2.tokenizer(s)["input_ids"] for s in SENTENCES[:3]]
  for side in ("left", "right"):
    ids, mask = decoding.pad_batch(seqs, pad_id=2, side=side)
    batch = np.asarray(m.apply({"params": smollm2.params}, ids, mask, method=m.lm))
    for i, s in enumerate(seqs):
      solo = np.asarray(m.apply({"params": smollm2.params}, np.array([s]),
                                np.ones((1, len(s)), bool), method=m.lm))[0]
      np.testing.assert_allclose(batch[i][mask[i]], solo, atol=2e-4)


@pytest.mark.real_model
def test_greedy_chat_answer_is_sensible(smollm2):
  answers = decoding.generate_text(
      smollm2, ["What is the capital of France?", "What is 2 + 3? Answer with a number."],
      max_new_tokens=24, batch_size=2)
  print("SmolLM2 answers:", answers)
  assert "Paris" in answers[0]
  assert "5" in answers[1]




@pytest.mark.real_model
@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data not present")
def test_zero_shot_ag_news_above_chance(smollm2):
  """50 class-balanced real AG News test queries, manual prompt: chance is 25%."""
  from qpo_jax import evaluation
  from qpo_jax.targets import LocalTarget
  from qpo_jax.tasks import base, load_splits

  task, s = load_splits({"name": "ag_news", "seed": 0, "data": {
      "dir": os.path.join(SHARED, "ag_news"),
      "files": {"train": "test.csv[:10%]", "test": "test.csv[10%:]"}}}, ("test",))
  queries = base.sample_queries(s["test"], 50, seed=0)
  out = evaluation.evaluate_pairs(task, LocalTarget(smollm2, chat=False),
                                  [(q, task.manual_prompt) for q in queries])
  acc = evaluation.accuracy(out)
  print(f"\nSmolLM2-135M-Instruct zero-shot AG News, 50 balanced queries, manual prompt: "
        f"accuracy {acc:.2f} (chance 0.25)")
  assert acc > 0.4
