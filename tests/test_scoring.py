"""Option scoring: batched == one-by-one, NLL by hand, bounded compilations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qpo_jax import scoring
from qpo_jax.models.config import preset
from qpo_jax.models.transformer import Transformer, init_params


@dataclasses.dataclass
class _LM:
  cfg: object
  params: object


LM = _LM(preset("tiny-llama"), init_params(preset("tiny-llama"), jax.random.key(2)))
RNG = np.random.default_rng(0)


def _naive_nll(lm, prefix, option):
  """Full forward over prefix + option, one sequence at a time."""
  seq = np.array([list(prefix) + list(option)])
  logits = Transformer(lm.cfg).apply({"params": lm.params}, jnp.asarray(seq),
                                     jnp.ones(seq.shape, bool), method=Transformer.lm)
  logp = np.asarray(jax.nn.log_softmax(logits[0]))
  n = len(prefix)
  return -np.mean([logp[n - 1 + j, tok] for j, tok in enumerate(option)])


def _random_rows(n, k, vocab=512):
  prefixes = [RNG.integers(1, vocab, RNG.integers(3, 40)).tolist() for _ in range(n)]
  options = [[RNG.integers(1, vocab, RNG.integers(1, 6)).tolist() for _ in range(k)]
             for _ in range(n)]
  return prefixes, options


def test_batched_equals_one_by_one():
  prefixes, options = _random_rows(11, 3)  # per-row options (multiple choice), ragged
  got = scoring.score(LM, prefixes, options, batch_size=4)
  want = np.array([[_naive_nll(LM, p, o) for o in opts] for p, opts in zip(prefixes, options)])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_nll_by_hand_when_blocks_are_identity():
  """With zeroed output projections each block adds nothing: next-token logits are
  rmsnorm(E[prev]) @ E.T, which numpy computes directly."""
  params = jax.tree_util.tree_map(np.asarray, LM.params)
  params["layers"]["attn"]["o"]["kernel"] = np.zeros_like(params["layers"]["attn"]["o"]["kernel"])
  params["layers"]["mlp"]["down"]["kernel"] = np.zeros_like(params["layers"]["mlp"]["down"]["kernel"])
  lm = _LM(LM.cfg, params)
  emb, head = params["embed"]["embedding"], params["lm_head"]["kernel"]
  scale = params["final_norm"]["scale"]

  def logp_after(tok):
    x = emb[tok]
    h = x / np.sqrt(np.mean(x * x) + lm.cfg.norm_eps) * scale
    z = h @ head
    return z - np.log(np.exp(z - z.max()).sum()) - z.max()

  prefix, options = [10, 20, 30], [[5], [6, 7], [8, 9, 11]]
  by_hand = [-np.mean([logp_after(prev)[tok] for prev, tok in zip([30] + o[:-1], o)])
             for o in options]
  got = scoring.score(lm, [prefix], [options])[0]
  np.testing.assert_allclose(got, by_hand, rtol=1e-4)
  assert int(np.argmin(got)) == int(np.argmin(by_hand))


def test_compilations_stay_bounded():
  scoring.option_nll.clear_cache()
  for _ in range(12):  # prefixes of 3..39 tokens, options of 1..5 tokens
    prefixes, options = _random_rows(int(RNG.integers(1, 9)), 4)
    scoring.score(LM, prefixes, options, batch_size=8)
  # prefix buckets {32, 64} x option buckets {4, 8}
  assert scoring.option_nll._cache_size() <= 4


def test_bad_shapes_are_rejected():
  with pytest.raises(ValueError, match="same number of options"):
    scoring.score(LM, [[1, 2], [3]], [[[1]], [[1], [2]]])
  with pytest.raises(ValueError, match="2 prefixes but 1 option lists"):
    scoring.score(LM, [[1, 2], [3]], [[[1]]])
