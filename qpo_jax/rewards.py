"""The spec's rewards, the prompt's batch accuracy, min-max normalisation and filtering.

  zero-shot choice: R = 10*correct + 10*avg_acc(p) - NLL(gold option | p, q)
  zero-shot math:   R = 10*correct + 10*avg_acc(p) - NLL(response)
  few-shot:         R = 10*(acc_q(p) + avg_acc(p))

NLL(gold option) is, by `nll_term`: "token" (the spec), the gold option's
mean token NLL as the target continues the prompt; or "choice", the NLL of the
gold option among the options, -log softmax(-option NLLs)[gold] (the
classification cross-entropy of the target's choice). They differ for a chat
target: a bare-label reply's token NLL mostly measures whether the prompt
makes the model answer in one word (SmolLM2 on TweetEval: about 1.5 after
prompts that list the options and ask for one word, 3 to 5 after others),
so with "token" the reward ranks prompts by reply format, not by how sure the
target is of the right label; "choice" is invariant to that shared shift.

avg_acc(p) is the prompt's accuracy over the batch it was evaluated in: in
D_0 a source prompt over all its train queries; in a collection batch, where
the policy writes one prompt per query, the accuracy of the whole batch (as
the authors' code stores it), so collected rewards are on D_0's scale.
Normalisation R <- 100*(R - min)/(max - min) uses the min and max of D_0,
stored with it (the official code reads them from a file it never
published); every later loop keeps them, clipping to [0, 100], so R* = 100
means the same raw reward in every round.

Expert filtering happens when a round's training data is drawn (the datasets
keep every record, so baselines and analyses see all of them): an absolute
threshold on the raw reward and/or each query's top fraction by reward.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from qpo_jax.tasks.base import CHOICE


NAN = float("nan")


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What the target did with one (query, prompt) pair (evaluation.py makes them).

  zero-shot choice: correct, pred, option_nll (per option), gold_nll
  zero-shot math:   correct, answer (extracted number), response, response_nll
  few-shot:         per_set (correctness under each demonstration set)
  `with_rewards` fills in avg_acc and reward.
  """

  correct: float = NAN
  pred: int = -1
  option_nll: tuple[float, ...] = ()
  gold_nll: float = NAN
  answer: float | None = None
  response: str = ""
  response_nll: float = NAN
  per_set: tuple[int, ...] = ()
  avg_acc: float = NAN
  reward: float = NAN

  @property
  def accuracy(self) -> float:
    """The pair's accuracy: few-shot, the mean over the demo sets (the spec's acc_q); else
    zero-shot correctness."""
    return float(np.mean(self.per_set)) if self.per_set else float(self.correct)


def prompt_accuracy(prompts: Sequence[str], outcomes: Sequence[Outcome]) -> dict[str, float]:
  """Mean accuracy of each prompt over the outcomes given (the spec's avg_acc)."""
  sums: dict[str, list[float]] = {}
  for p, o in zip(prompts, outcomes, strict=True):
    sums.setdefault(p, []).append(o.accuracy)
  return {p: float(np.mean(v)) for p, v in sums.items()}


NLL_TERMS = ("token", "choice")


def choice_nll(option_nll: Sequence[float], gold_nll: float) -> float:
  """-log of the gold option's share of softmax(-option NLLs): the choice's cross-entropy,
  gold_nll + log sum_k exp(-nll_k)."""
  scores = -np.asarray(option_nll, np.float64)
  top = scores.max()
  return float(gold_nll + top + np.log(np.exp(scores - top).sum()))


def reward(outcome: Outcome, avg_acc: float, setting: str, kind: str,
           nll_term: str = "token") -> float:
  """R of one evaluated pair."""
  if setting == "few_shot":
    return 10.0 * (outcome.accuracy + avg_acc)
  if setting != "zero_shot":
    raise ValueError(f"setting {setting!r} is not zero_shot or few_shot")
  if nll_term not in NLL_TERMS:
    raise ValueError(f"offline.nll_term={nll_term!r} is not one of {NLL_TERMS}")
  if kind != CHOICE:
    penalty = outcome.response_nll
  elif nll_term == "choice":
    penalty = choice_nll(outcome.option_nll, outcome.gold_nll)
  else:
    penalty = outcome.gold_nll
  return 10.0 * outcome.correct + 10.0 * avg_acc - float(penalty)


def with_rewards(prompts: Sequence[str], outcomes: Sequence[Outcome], setting: str, kind: str, *,
                 by_prompt: bool = True, nll_term: str = "token",
                 prior: Mapping[str, Sequence[float]] | None = None) -> list[Outcome]:
  """The outcomes of one batch of (query, prompt) pairs with `avg_acc` and `reward` filled in.

  avg_acc is each prompt's accuracy over this batch (`by_prompt`, D_0), or
  the accuracy of the whole batch (a collection batch). `prior` holds accuracies a
  prompt already has from earlier records (by_prompt only): its avg_acc is then over
  those and this batch's, every query it was ever scored on.
  """
  acc = prompt_accuracy(prompts, outcomes)
  if prior:
    fresh: dict[str, list[float]] = collections.defaultdict(list)
    for p, o in zip(prompts, outcomes, strict=True):
      fresh[p].append(o.accuracy)
    acc = {p: float(np.mean(list(prior.get(p, ())) + v)) for p, v in fresh.items()}
  batch = float(np.mean([o.accuracy for o in outcomes])) if outcomes else 0.0
  out = []
  for p, o in zip(prompts, outcomes, strict=True):
    avg = acc[p] if by_prompt else batch
    out.append(dataclasses.replace(o, avg_acc=avg,
                                   reward=reward(o, avg, setting, kind, nll_term)))
  return out


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Min-max normalisation to [0, 100]; fitted on a dataset and stored with it."""

  min: float
  max: float

  @classmethod
  def fit(cls, rewards: Iterable[float]) -> "Normalizer":
    values = np.asarray(list(rewards), np.float64)
    if values.size == 0:
      raise ValueError("cannot fit reward normalisation on an empty dataset")
    if not np.isfinite(values).all():
      raise ValueError(f"cannot fit reward normalisation: {int((~np.isfinite(values)).sum())} "
                       "non-finite rewards")
    return cls(float(values.min()), float(values.max()))

  def __call__(self, r):
    """Normalised reward(s), clipped to [0, 100]; a degenerate range maps everything to 100."""
    r = np.asarray(r, np.float64)
    span = self.max - self.min
    out = np.full_like(r, 100.0) if span <= 0 else np.clip(100.0 * (r - self.min) / span, 0, 100)
    return float(out) if out.ndim == 0 else out

  def to_dict(self) -> dict[str, float]:
    return {"min": self.min, "max": self.max}

  @classmethod
  def from_dict(cls, d: Mapping[str, float]) -> "Normalizer":
    return cls(float(d["min"]), float(d["max"]))


def _reward_of(r) -> float:
  return r["reward"] if isinstance(r, Mapping) else r.reward


def _query_of(r) -> str:
  return (r["query_id"] or r["query"]) if isinstance(r, Mapping) else (r.query_id or r.query)


def _prompt_of(r) -> str:
  return r["prompt"] if isinstance(r, Mapping) else r.prompt


def advantages(records: Sequence[Any]) -> list[float]:
  """Each record's reward minus its prompt's mean reward on the other queries.

  What a prompt adds for this query beyond what it gives every query: on a grid
  of queries x source prompts, a prompt that is good everywhere scores ~0 and
  one that is unusually good for this query scores high. A prompt no other
  record has (most collected prompts) is compared with the mean of all other
  records, so it is neither free of a baseline nor its own baseline.
  """
  values = [_reward_of(r) for r in records]
  sums, counts = collections.defaultdict(float), collections.Counter()
  for r, v in zip(records, values):
    sums[_prompt_of(r)] += v
    counts[_prompt_of(r)] += 1
  total, n = sum(values), len(values)
  out = []
  for r, v in zip(records, values):
    p = _prompt_of(r)
    if counts[p] > 1:
      out.append(v - (sums[p] - v) / (counts[p] - 1))
    else:
      out.append(v - ((total - v) / (n - 1) if n > 1 else 0.0))
  return out


def top_per_query(records: Sequence[Any], fraction: float | None,
                  scores: Sequence[float] | None = None) -> list[Any]:
  """Each query's best ceil(fraction * n) records by score (default: the reward; ties: the
  earlier record), in order.

  A query is its `query_id` (else its text); the fraction is of that query's
  records, so a collected query with one prompt keeps it, and D_0's grid of
  queries x source prompts keeps each query's best prompts.
  """
  if fraction is None:
    return list(records)
  if not 0 < fraction <= 1:
    raise ValueError(f"offline.top_fraction={fraction} must be in (0, 1]")
  scores = [_reward_of(r) for r in records] if scores is None else list(scores)
  by_query = collections.defaultdict(list)
  for i, r in enumerate(records):
    by_query[_query_of(r)].append(i)
  keep = set()
  for rows in by_query.values():
    best = sorted(rows, key=lambda i: (-scores[i], i))
    keep.update(best[:math.ceil(fraction * len(rows))])
  return [r for i, r in enumerate(records) if i in keep]


RANK_BY = ("reward", "advantage")
RETURNS = ("reward", "query_centred")


def query_centred(queries: Sequence[str], returns: Sequence[float]) -> np.ndarray:
  """50 + each return minus the mean return of its query's records, clipped to [0, 100].

  The spec's return (the normalised reward) is mostly the prompt's `10 * avg_acc` and
  whether the query is easy: a policy conditioned on it learns which prompt a row
  carries, not what it did for this query. Centred per query, a return says how much
  better than the query's other prompts the row's prompt did, so R* = 100 asks for the
  prompt that beats the rest on this query (`offline.returns="query_centred"`; pass every
  record of the dataset, before any filter, so the mean is over all its prompts).
  """
  values = np.asarray(returns, np.float64)
  sums, counts = collections.defaultdict(float), collections.Counter()
  for q, v in zip(queries, values, strict=True):
    sums[q] += v
    counts[q] += 1
  means = np.asarray([sums[q] / counts[q] for q in queries], np.float64)
  return np.clip(50.0 + values - means, 0.0, 100.0)


def per_query_sample(records: Sequence[Any], k: int, seed: int) -> list[Any]:
  """A random `k` of each query's records (all of a query with fewer; 0: every record), in
  order: rows across the reward range at a fraction of the training steps
  (`offline.rows_per_query`). The draw depends on `seed` and on the records' order."""
  if k < 0:
    raise ValueError(f"offline.rows_per_query={k} must be >= 0")
  if not k:
    return list(records)
  by_query = collections.defaultdict(list)
  for i, r in enumerate(records):
    by_query[_query_of(r)].append(i)
  rng = np.random.default_rng(seed)
  keep = set()
  for rows in by_query.values():  # queries in order of their first record
    keep.update(rows if len(rows) <= k else rng.choice(rows, k, replace=False).tolist())
  return [r for i, r in enumerate(records) if i in keep]


def expert_filter(records: Sequence[Any], threshold: float | None = None,
                  top_fraction: float | None = None, rank_by: str = "reward") -> list[Any]:
  """The spec's "expert" filtering: the absolute threshold on the raw reward, then each
  query's top fraction ranked by `rank_by`: the reward, or its `advantages` (computed over
  all of `records`, before the threshold)."""
  if rank_by not in RANK_BY:
    raise ValueError(f"offline.rank_by={rank_by!r} must be one of {RANK_BY}")
  scores = advantages(records) if rank_by == "advantage" else [_reward_of(r) for r in records]
  kept = [i for i, r in enumerate(records) if threshold is None or _reward_of(r) >= threshold]
  return top_per_query([records[i] for i in kept], top_fraction, [scores[i] for i in kept])
