"""Weight contractions whose backward pass XLA:CPU runs at matmul speed.

`dense_dot_general` is a drop-in `dot_general` for Flax's Dense/DenseGeneral
(inputs' trailing axes against the kernel's leading axes) and `attend` the
tied LM head (hidden @ embedding^T). The values are exactly `lax.dot_general`'s;
only the VJP is written out. Autodiff's own transpose rule emits the weight
gradient as dot(dy, x) followed by a transpose, and XLA:CPU (jaxlib 0.10)
then lays it out so that the fused elementwise backward (SiLU, gating) is
written transposed, through a strided loop fusion: in the SmolLM2 MLP that
one fusion took as long as the MLP's three forward matmuls. Written as
dot(x, dy) contracting the token axes, the transpose lands on the saved
input instead and every matmul goes to the fast library path (what it saved:
experiments/results/README.md, "Speed"). tests/test_hf_parity.py checks every
parameter's gradient against PyTorch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _contract(x: jax.Array, w: jax.Array, n: int) -> jax.Array:
  """x's last n axes against w's first n: tensordot(x, w, n)."""
  return jnp.tensordot(x, w, n)


def _contract_fwd(x, w, n):
  return _contract(x, w, n), (x, w)


def _contract_bwd(n, res, dy):
  x, w = res
  out_axes = w.ndim - n
  # dx: dy's feature axes against w's output axes
  dx = jnp.tensordot(dy, w, (tuple(range(dy.ndim - out_axes, dy.ndim)),
                             tuple(range(n, w.ndim))))
  # dw: x first, contracting every token axis (see the module docstring)
  lead = tuple(range(x.ndim - n))
  dw = jnp.tensordot(x, dy, (lead, lead))
  return dx.astype(x.dtype), dw.astype(w.dtype)


_contract.defvjp(_contract_fwd, _contract_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                      **kwargs):
  """`lax.dot_general` for Dense layers; the common case gets the VJP above."""
  (lc, rc), (lb, rb) = dimension_numbers
  n = len(lc)
  common = (not lb and not rb and tuple(rc) == tuple(range(n)) and
            tuple(lc) == tuple(range(lhs.ndim - n, lhs.ndim)) and precision is None and
            preferred_element_type is None and not kwargs and lhs.dtype == rhs.dtype)
  if not common:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)
  return _contract(lhs, rhs, n)


def attend(hidden: jax.Array, embedding: jax.Array) -> jax.Array:
  """hidden @ embedding^T ([..., D] x [V, D] -> [..., V]), the tied LM head."""
  return _contract(hidden, embedding.T, 1)
