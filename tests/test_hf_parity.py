"""Our importer + model against HF transformers (PyTorch) on tiny random GPT-2 and Llama."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from qpo_jax.checkpoints.hf import assemble_params, load_hf_dir
from qpo_jax.models.transformer import Transformer, init_cache
from tests.hf_reference import hf_logits, tiny_hf_model

FAMILIES = {
    "gpt2": {},
    "llama": {},
    "llama-tied-bias": dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    "llama-rope-scaling": dict(rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                 low_freq_factor=1.0, high_freq_factor=4.0,
                                                 original_max_position_embeddings=16)),
}


def _batch(vocab=300):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, size=(3, 12))
  mask = np.ones((3, 12), bool)
  mask[1, :4] = False  # left padding
  mask[2, 9:] = False  # right padding
  return ids, mask


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
  name = request.param
  model = tiny_hf_model(name.split("-")[0], **FAMILIES[name])
  directory = tmp_path_factory.mktemp(name)
  # Small shards so the multi-file (indexed) path is exercised too.
  model.save_pretrained(directory, max_shard_size="40KB")
  cfg, params, _ = load_hf_dir(str(directory))
  return name, model, cfg, params, directory


def test_checkpoint_is_sharded(pair):
  assert len(list(pair[4].glob("*.safetensors"))) > 1


@pytest.mark.integration
def test_full_forward_matches(pair):
  _, model, cfg, params, _ = pair
  ids, mask = _batch()
  ours = Transformer(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                                method=Transformer.lm)
  diff = np.abs(np.asarray(ours) - hf_logits(model, ids, mask))[mask]
  assert diff.max() < 1e-4, diff.max()


@pytest.mark.integration
def test_kv_cached_decoding_matches(pair):
  """Prefill a padded batch, then feed tokens one at a time; compare with full HF passes."""
  _, model, cfg, params, _ = pair
  ids, mask = _batch()
  m = Transformer(cfg)
  cache = init_cache(cfg, 3, 20)
  prompt_len, steps = 8, 6
  extra = np.random.default_rng(1).integers(0, 300, size=(3, steps))
  full_ids = np.concatenate([ids[:, :prompt_len], extra], axis=1)
  full_mask = np.concatenate([mask[:, :prompt_len], np.ones((3, steps), bool)], axis=1)
  hidden, cache = m.apply({"params": params}, jnp.asarray(full_ids[:, :prompt_len]),
                          jnp.asarray(full_mask[:, :prompt_len]), cache=cache)
  got = [m.apply({"params": params}, hidden, method=m.logits)]
  for t in range(prompt_len, prompt_len + steps):
    hidden, cache = m.apply({"params": params}, jnp.asarray(full_ids[:, t:t + 1]),
                            jnp.asarray(full_mask[:, t:t + 1]), cache=cache)
    got.append(m.apply({"params": params}, hidden, method=m.logits))
  ours = np.concatenate([np.asarray(g) for g in got], axis=1)
  ref = hf_logits(model, full_ids, full_mask)
  diff = np.abs(ours - ref)[full_mask]
  assert diff.max() < 1e-4, diff.max()
  assert int(cache["index"]) == prompt_len + steps
  np.testing.assert_array_equal(np.asarray(cache["pos"]), full_mask.sum(1))


@pytest.mark.integration
def test_bfloat16_checkpoint_and_compute(tmp_path):
  model = tiny_hf_model("llama", seed=3)
  model.to(torch.bfloat16).save_pretrained(tmp_path)
  cfg, params, _ = load_hf_dir(str(tmp_path), dtype="bfloat16")
  assert params["embed"]["embedding"].dtype == np.float32  # master weights stay f32
  ids, mask = _batch()
  ours = Transformer(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                                method=Transformer.lm)
  ref = hf_logits(model.float(), ids, mask)
  assert ours.dtype == jnp.float32
  # bf16 compute: same predictions almost everywhere, small error.
  agree = (np.asarray(ours).argmax(-1) == ref.argmax(-1))[mask].mean()
  assert agree > 0.9 and np.abs(np.asarray(ours) - ref)[mask].max() < 0.1


@pytest.mark.integration
def test_gradients_match(pair):
  """Every parameter's gradient of the next-token loss equals HF's (backward passes, incl.
  the hand-written weight VJPs of models/dots.py, checked against PyTorch autograd)."""
  _, model, cfg, params, _ = pair
  ids, mask = _batch()
  target = np.roll(ids, -1, axis=1)
  weight = (mask & np.roll(mask, -1, axis=1)).astype(np.float32)
  weight[:, -1] = 0.0

  @jax.jit
  def loss(p):
    logits = Transformer(cfg).apply({"params": p}, ids, mask, method=Transformer.lm)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1)[..., 0]
    return -(lp * weight).sum() / weight.sum()

  ours = jax.grad(loss)(params)
  model.zero_grad()
  pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=torch.tensor(pos)).logits
  lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(target)[..., None])[..., 0]
  w = torch.tensor(weight)
  (-(lp * w).sum() / w.sum()).backward()
  hf_grads = {n: p.grad.numpy() for n, p in model.named_parameters()}
  theirs = assemble_params(cfg, hf_grads, "HF gradients", ("", "transformer."))
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ours)[0],
                          jax.tree_util.tree_leaves(theirs)):
    a = np.asarray(a)
    assert np.isfinite(a).all(), path
    scale = max(np.abs(b).max(), 1e-6)
    assert np.abs(a - b).max() / scale < 1e-4, (path, np.abs(a - b).max(), scale)
