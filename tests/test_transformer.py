"""Mask and position rules by hand; dropout, remat and dtype switches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qpo_jax.models.config import preset
from qpo_jax.models.transformer import Transformer, attention_mask, init_params, positions_from_mask


def test_positions_count_real_tokens_only():
  mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 0, 1]], bool)
  np.testing.assert_array_equal(positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2],
                                                            [0, 0, 1, 1, 2]])
  np.testing.assert_array_equal(positions_from_mask(mask[:, :2], jnp.array([4, 0, 7])),
                                [[4, 4], [0, 1], [7, 7]])


def test_attention_mask_is_causal_over_real_keys():
  key_valid = jnp.array([[False, True, True, True]])
  m = np.asarray(attention_mask(key_valid, jnp.arange(4)))[0].astype(int)
  np.testing.assert_array_equal(m, [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]])
  # A query written at slot 2 of a longer cache sees slots 0..2 only.
  m = np.asarray(attention_mask(jnp.ones((1, 5), bool), jnp.array([2])))[0]
  np.testing.assert_array_equal(m, [[True, True, True, False, False]])


@pytest.mark.slow
def test_dropout_remat_and_bfloat16_switches():
  cfg = preset("tiny-gpt2")
  params = init_params(cfg, jax.random.key(0))
  ids = jnp.arange(24).reshape(2, 12)
  mask = jnp.ones((2, 12), bool)

  def run(c, **kw):
    return Transformer(c).apply({"params": params}, ids, mask, **kw)[0]

  base = run(cfg)
  drop_cfg = cfg.replace(dropout=0.2)
  np.testing.assert_allclose(run(drop_cfg), base, atol=1e-6)  # deterministic by default
  a = run(drop_cfg, deterministic=False, rngs={"dropout": jax.random.key(1)})
  b = run(drop_cfg, deterministic=False, rngs={"dropout": jax.random.key(1)})
  c = run(drop_cfg, deterministic=False, rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a - base)).max() > 1e-3 and np.abs(np.asarray(a - c)).max() > 1e-3

  def loss(p, c):
    return jnp.sum(Transformer(c).apply({"params": p}, ids, mask, method=Transformer.lm) ** 2)

  g1 = jax.grad(loss)(params, cfg)
  g2 = jax.grad(loss)(params, cfg.replace(remat=True))
  for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)
  bf = run(cfg.replace(dtype="bfloat16"))
  assert bf.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf, np.float32), base, atol=0.1)
