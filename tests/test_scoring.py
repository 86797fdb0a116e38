"""Option scoring: batched == one-by-one, NLL by hand, bounded compilations."""

import dataclasses

import jax
import numpy as np
import pytest

from qpo_jax import scoring
from qpo_jax.models.config import preset
from qpo_jax.models.transformer import init_params
from qpo_jax.testing import naive_option_nll


@dataclasses.dataclass
class _LM:
  cfg: object
  params: object


LM = _LM(preset("tiny-llama"), init_params(preset("tiny-llama"), jax.random.key(2)))
RNG = np.random.default_rng(0)


def _random_rows(n, k, vocab=512):
  prefixes = [RNG.integers(1, vocab, RNG.integers(3, 40)).tolist() for _ in range(n)]
  options = [[RNG.integers(1, vocab, RNG.integers(1, 6)).tolist() for _ in range(k)]
             for _ in range(n)]
  return prefixes, options


@pytest.mark.integration
def test_batched_equals_one_by_one():
  prefixes, options = _random_rows(11, 3)  # per-row options (multiple choice), ragged
  got = scoring.score(LM, prefixes, options, batch_size=4)
  want = np.array([[naive_option_nll(LM, p, o) for o in opts]
                   for p, opts in zip(prefixes, options)])
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
def test_shared_prefix_equals_unshared(monkeypatch):
  """Rows with common beginnings (a chat header, one instruction over many queries) run their
  shared tokens once per instruction, however many batches it spans; the NLLs equal the
  unshared computation and the naive one."""
  shared_lengths, passes = [], []
  real_cache, real_nll = scoring.prefix_cache, scoring.option_nll

  def cache_spy(cfg, params, shared, shared_mask):
    shared_lengths.append(int(shared_mask.sum()))
    return real_cache(cfg, params, shared, shared_mask)

  def nll_spy(*args, shared=None):
    passes.append(None if shared is None else int(shared["pos"][0]))
    return real_nll(*args, shared=shared)

  header = RNG.integers(1, 512, 21).tolist()
  instructions = [RNG.integers(1, 512, n).tolist() for n in (5, 17)]
  prefixes = [header + instructions[i // 7] + RNG.integers(1, 512, RNG.integers(1, 30)).tolist()
              for i in range(13)]  # rows 0-6 have instruction 0, rows 7-12 instruction 1
  prefixes.append(list(prefixes[0]))  # a duplicate row
  options = [[[7], [8, 9], [10, 11, 12]]] * len(prefixes)
  assert scoring.common_prefix_length(prefixes[:7]) >= 26
  assert scoring.common_prefix_length([prefixes[0], prefixes[-1]]) == len(prefixes[0]) - 1
  monkeypatch.setattr(scoring, "prefix_cache", cache_spy)
  monkeypatch.setattr(scoring, "option_nll", nll_spy)
  shared = scoring.score(LM, prefixes, options, batch_size=4)
  # batch_order regroups the rows: instruction 0's eight rows (with the duplicate) make two
  # batches, instruction 1's six rows two more; each instruction's beginning runs once
  assert len(shared_lengths) == 2
  assert sorted(passes) == sorted(shared_lengths * 2) and passes[0] == passes[1]
  assert min(shared_lengths) >= 26 and max(shared_lengths) >= 38
  plain = scoring.score(LM, prefixes, options, batch_size=4, min_shared=0)
  np.testing.assert_allclose(shared, plain, atol=1e-5)
  want = np.array([[naive_option_nll(LM, p, o) for o in opts]
                   for p, opts in zip(prefixes, options)])
  np.testing.assert_allclose(shared, want, atol=1e-5)


def test_batch_order_groups_common_beginnings_shortest_first():
  """Rows of two instructions, given interleaved and unsorted: each instruction's rows come
  out together and by length (a frequent first word after one of them forms its own group
  right after it); a single row needs no ordering."""
  header, a, b = [1, 2, 3], [10, 11, 12], [20, 21]
  rows = []
  for n in range(12):
    rows.append(header + a + [100 + n] * (1 + (7 * n) % 5))
    rows.append(header + b + [200 + n] * (1 + (3 * n) % 4))
  rows += [header + a + [99] + [300 + n] * n for n in range(1, 5)]  # a "@user" subgroup
  order = scoring.batch_order(rows, batch_size=4)
  assert sorted(order) == list(range(len(rows)))
  kinds = ["b" if rows[i][3] == 20 else "a99" if rows[i][6] == 99 else "a" for i in order]
  assert kinds == ["a"] * 12 + ["a99"] * 4 + ["b"] * 12
  lengths = [len(rows[i]) for i in order]
  for lo, hi in ((0, 12), (12, 16), (16, 28)):
    assert lengths[lo:hi] == sorted(lengths[lo:hi])
  assert scoring.batch_order(rows[:1], batch_size=4) == [0]


@pytest.mark.integration
def test_scores_do_not_depend_on_the_callers_row_order():
  prefixes, options = _random_rows(9, 2)
  prefixes = [[5, 6, 7, 8, 9, 10, 11, 12] + p for p in prefixes]  # one shared beginning
  got = scoring.score(LM, prefixes, options, batch_size=4, min_shared=4)
  perm = RNG.permutation(len(prefixes))
  shuffled = scoring.score(LM, [prefixes[i] for i in perm], [options[i] for i in perm],
                           batch_size=4, min_shared=4)
  np.testing.assert_allclose(shuffled, got[perm], atol=1e-5)
