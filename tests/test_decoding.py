"""KV-cached decoding against recomputation, padding invariance, EOS, sampling filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qpo_jax import decoding
from qpo_jax.models.config import preset
from qpo_jax.models.transformer import Transformer, init_params

CFG = preset("tiny-llama")
PARAMS = init_params(CFG, jax.random.key(1))
PROMPTS = [[5, 17, 99, 3, 42, 7], [8, 200], [300, 301, 302, 303]]
EOS = jnp.array([511], jnp.int32)


def _generate(seqs, side="left", rows=None, max_new=6, seed=0, row_ids=None, **kw):
  ids, mask = decoding.pad_batch(seqs, pad_id=0, side=side, multiple=8, rows=rows)
  keys = decoding.row_keys(seed, row_ids if row_ids is not None else np.arange(len(ids)))
  out, lengths = decoding.generate(CFG, PARAMS, jnp.asarray(ids), jnp.asarray(mask), keys, EOS, 0,
                                   max_new_tokens=max_new, **kw)
  return np.asarray(out), np.asarray(lengths)


def _greedy_by_recomputation(seq, steps):
  seq = list(seq)
  for _ in range(steps):
    logits = Transformer(CFG).apply({"params": PARAMS}, jnp.asarray([seq]),
                                    jnp.ones((1, len(seq)), bool), method=Transformer.lm)
    seq.append(int(jnp.argmax(logits[0, -1])))
  return seq[-steps:]


@pytest.mark.integration
def test_cached_greedy_equals_recomputation():
  out, lengths = _generate(PROMPTS)
  for i, p in enumerate(PROMPTS):
    assert list(out[i]) == _greedy_by_recomputation(p, 6)
  np.testing.assert_array_equal(lengths, 6)


@pytest.mark.integration
@pytest.mark.parametrize("kw", [  # greedy is the same loop at temperature 0 (next test: top_k=1)
    {}, dict(temperature=1.0, top_k=50, top_p=0.9)])
def test_padding_and_batch_position_do_not_change_outputs(kw):
  ids = [7, 3, 1]  # stable row ids give each prompt its own key wherever it sits
  ref = [_generate([p], row_ids=[r], **kw)[0][0] for p, r in zip(PROMPTS, ids)]
  for side in ("left", "right"):
    out, lengths = _generate(PROMPTS, side=side, rows=4, row_ids=ids + [9], **kw)
    assert lengths[3] == 0 and (out[3] == 0).all()  # the all-padding filler row
    for i in range(3):
      np.testing.assert_array_equal(out[i], ref[i])
  rev, _ = _generate(PROMPTS[::-1], row_ids=ids[::-1], **kw)
  np.testing.assert_array_equal(rev[::-1], np.stack(ref))


@pytest.mark.integration
def test_sampling_is_seeded():
  a, _ = _generate(PROMPTS, seed=3, temperature=1.0, max_new=12)
  b, _ = _generate(PROMPTS, seed=3, temperature=1.0, max_new=12)
  c, _ = _generate(PROMPTS, seed=4, temperature=1.0, max_new=12)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  greedy, _ = _generate(PROMPTS)
  top1, _ = _generate(PROMPTS, seed=5, temperature=0.7, top_k=1)
  np.testing.assert_array_equal(top1, greedy)


def test_stops_at_eos_and_pads_after():
  greedy, _ = _generate(PROMPTS)
  eos_tok = int(greedy[0, 2])
  first = [int(np.argmax(row == eos_tok)) if (row == eos_tok).any() else 6 for row in greedy]
  ids, mask = decoding.pad_batch(PROMPTS, pad_id=0, multiple=8)
  out, lengths = decoding.generate(CFG, PARAMS, jnp.asarray(ids), jnp.asarray(mask),
                                   decoding.row_keys(0, range(3)), jnp.array([eos_tok]), 0,
                                   max_new_tokens=6)
  out, lengths = np.asarray(out), np.asarray(lengths)
  np.testing.assert_array_equal(lengths, first)
  assert lengths[0] == 2
  for i in range(3):
    np.testing.assert_array_equal(out[i, :lengths[i]], greedy[i, :lengths[i]])
    assert (out[i, lengths[i]:] == 0).all()


@pytest.mark.integration
def test_top_p_and_top_k_support_and_frequencies():
  logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
  keys = decoding.row_keys(0, range(4000))

  def freq(**kw):
    draw = jax.vmap(lambda k: decoding.sample_token(logits, k[None], 1.0, **kw)[0])(keys)
    return np.bincount(np.asarray(draw), minlength=4) / len(keys)

  np.testing.assert_array_equal(freq(top_p=0.6) > 0, [False, True, False, True])
  np.testing.assert_array_equal(freq(top_p=0.5) > 0, [False, True, False, False])
  np.testing.assert_array_equal(freq(top_p=0.81) > 0, [False, True, True, True])
  np.testing.assert_array_equal(freq(top_k=3) > 0, [False, True, True, True])
  np.testing.assert_array_equal(freq(top_k=3, top_p=0.6) > 0, [False, True, False, True])
  # Renormalised over the kept tokens: 0.5 / 0.8 and 0.3 / 0.8.
  np.testing.assert_allclose(freq(top_k=2)[[1, 3]], [0.625, 0.375], atol=0.03)
  np.testing.assert_allclose(freq()[[0, 1, 2, 3]], [0.05, 0.5, 0.15, 0.3], atol=0.03)


@pytest.mark.integration
def test_pad_batch_buckets_and_sides():
  ids, mask = decoding.pad_batch([[1, 2, 3], [4]], pad_id=9, side="left", multiple=4, rows=3)
  np.testing.assert_array_equal(ids, [[9, 1, 2, 3], [9, 9, 9, 4], [9, 9, 9, 9]])
  np.testing.assert_array_equal(mask.sum(1), [3, 1, 0])
  ids, _ = decoding.pad_batch([[1, 2, 3, 4, 5]], pad_id=9, side="right", multiple=4)
  assert ids.shape == (1, 8) and ids[0, 5] == 9
