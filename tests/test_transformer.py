"""Mask and position rules by hand; dropout, remat and dtype switches; the dense VJP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qpo_jax.models.config import preset
from qpo_jax.models.dots import dense_dot_general
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


@pytest.mark.integration
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


@pytest.mark.integration
@pytest.mark.parametrize("lhs_shape,rhs_shape,dims", [
    ((2, 5, 6), (6, 7), (((2,), (0,)), ((), ()))),  # Dense
    ((2, 5, 6), (6, 3, 4), (((2,), (0,)), ((), ()))),  # DenseGeneral to heads
    ((2, 5, 3, 4), (3, 4, 6), (((2, 3), (0, 1)), ((), ()))),  # heads back to d_model
    ((5, 6), (6, 7), (((1,), (0,)), ((), ()))),
    ((2, 5, 6), (2, 6, 7), (((2,), (1,)), ((0,), (0,)))),  # batch dims: plain lax path
])
def test_dense_dot_general_equals_lax(lhs_shape, rhs_shape, dims):
  """Same values and gradients as lax.dot_general (the VJP is hand-written)."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(k1, lhs_shape), jax.random.normal(k2, rhs_shape)
  out_shape = jax.eval_shape(lambda: jax.lax.dot_general(x, w, dims)).shape
  ct = jax.random.normal(k3, out_shape)
  ref = lambda x, w: jnp.sum(jax.lax.dot_general(x, w, dims) * ct)  # noqa: E731
  ours = lambda x, w: jnp.sum(dense_dot_general(x, w, dims) * ct)  # noqa: E731
  np.testing.assert_allclose(dense_dot_general(x, w, dims), jax.lax.dot_general(x, w, dims),
                             rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.jit(jax.grad(ours, (0, 1)))(x, w), jax.grad(ref, (0, 1))(x, w)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  gb = jax.grad(lambda x, w: jnp.sum(dense_dot_general(x, w, dims).astype(jnp.float32)), (0, 1))(
      xb, wb)
  assert gb[0].dtype == jnp.bfloat16 and gb[1].dtype == jnp.bfloat16
