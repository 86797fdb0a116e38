"""Is a method writing prompts, or routing queries to label-forcing ones? Statistics, no target calls.

A small target can answer one label whatever the query after some prompts
(SmolLM2 on TweetEval: 'Anger, joy, optimism or sadness?' -> Anger on every
tweet). A method that sends each query to the prompt forcing its predicted
label is a classifier, not a prompt writer. These statistics tell them apart:

  purity          a prompt's share of its most-predicted label over a set of
                  queries; >= PURE marks a label-forcing prompt
  routing         of a method's per-query prompts: the share that are pure, and
                  how often the target's answer is the prompt's majority label
  label router    what a method's prompts say about the query's class: how often
                  a prompt's majority label is the gold one (the method's implicit
                  classifier), and the accuracy a pure label router would get
                  from the same labels (each query given its prompt's majority
                  label's best D_0 prompt): a method whose prompts do no more than
                  carry a label scores about what that router scores
  new text        a prompt that is neither a source prompt nor a piece of one
                  (case, spacing and punctuation folded): a source prompt with
                  words cut off is not new
  writing         on the queries where a method wrote a new prompt: its accuracy
                  there and on the queries that got a pool prompt, and how often
                  the new prompt was right where no source prompt was, or put a
                  lower choice NLL on the gold label than every source prompt
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

PURE = 0.9  # purity at or above which a prompt counts as label-forcing


@dataclasses.dataclass(frozen=True)
class Purity:
  purity: float  # share of the most-predicted label
  majority: int  # that label
  n: int  # queries it was measured on


def label_purity(prompts: Sequence[str], preds: Sequence[int]) -> dict[str, Purity]:
  """Each prompt's purity over the (prompt, predicted label) pairs given."""
  by: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for p, y in zip(prompts, preds, strict=True):
    by[p][int(y)] += 1
  out = {}
  for p, counts in by.items():
    label, top = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    out[p] = Purity(top / sum(counts.values()), label, sum(counts.values()))
  return out


def _folded(text: str) -> str:
  return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def is_new_text(prompt: str, sources: Sequence[str]) -> bool:
  """Neither a source prompt nor a run of whole words of one (after folding case and
  punctuation); the empty prompt is never new."""
  p = _folded(prompt)
  if not p:
    return False
  return not any(f" {p} " in f" {_folded(s)} " for s in sources)


def routing(prompts: Sequence[str], preds: Sequence[int], purity: Mapping[str, Purity],
            gold: Sequence[int] | None = None,
            label_route: Mapping[int, Sequence[float]] | None = None) -> dict[str, float]:
  """Share of per-query prompts that are label-forcing, and how often the target's answer is
  the prompt's majority label (over the queries whose prompt has a measured purity).

  With the queries' `gold` labels: how often the prompt's majority label is the gold one;
  with `label_route[y][i]` (query i's outcome after label y's best D_0 prompt) too, the
  accuracy of routing each query by its prompt's majority label instead (a label without a
  route counts as wrong).
  """
  known = [i for i, p in enumerate(prompts) if p in purity]
  n = max(len(known), 1)
  out = {
      "pure_fraction": sum(purity[prompts[i]].purity >= PURE for i in known) / n,
      "follows_majority": sum(int(preds[i]) == purity[prompts[i]].majority for i in known) / n,
      "measured": len(known) / max(len(prompts), 1)}
  if gold is not None:
    said = [purity[prompts[i]].majority for i in known]
    out["majority_is_gold"] = sum(y == int(gold[i]) for i, y in zip(known, said)) / n
    if label_route is not None:
      out["as_label_router"] = float(routed_by_label(said, label_route, known).sum()) / n
  return out


def routed_by_label(labels: Sequence[int], label_route: Mapping[int, Sequence[float]],
                    queries: Sequence[int] | None = None) -> np.ndarray:
  """Each query's outcome when routed by its label: `label_route[y][i]` for query i (of
  `queries`, default 0, 1, ...) given label y; a label without a route is wrong (0)."""
  queries = range(len(labels)) if queries is None else queries
  return np.asarray([float(label_route[y][i]) if y in label_route else 0.0
                     for i, y in zip(queries, labels, strict=True)])


def writing(prompts: Sequence[str], correct: Sequence[float], pool_correct: np.ndarray,
            gold_nll: Sequence[float] | None, pool_gold_nll: np.ndarray | None,
            sources: Sequence[str]) -> dict[str, Any]:
  """What a method's new prompts did, against the source prompts on the same queries.

  `pool_correct` is [source prompts, queries] (and `pool_gold_nll` the same for the
  gold label's choice NLL, when the task has options).
  """
  new = np.asarray([is_new_text(p, sources) for p in prompts], bool)
  correct = np.asarray(correct, np.float64)
  out: dict[str, Any] = {"new_fraction": float(new.mean()) if len(new) else 0.0,
                         "new_distinct": len({p for p, n in zip(prompts, new) if n})}
  out["accuracy_with_new"] = float(correct[new].mean()) if new.any() else None
  out["accuracy_with_pool"] = float(correct[~new].mean()) if (~new).any() else None
  none_right = pool_correct.max(axis=0) == 0
  out["new_right_where_no_source_is"] = float((correct[new] * none_right[new]).mean()) \
      if new.any() else None
  if gold_nll is not None and pool_gold_nll is not None and new.any():
    nll = np.asarray(gold_nll, np.float64)
    out["new_below_every_source_nll"] = float((nll[new] < pool_gold_nll.min(axis=0)[new]).mean())
  return out


def examples(prompts: Sequence[str], correct: Sequence[float], sources: Sequence[str],
             purity: Mapping[str, Purity], label_names: Sequence[str] = (), k: int = 5
             ) -> list[dict[str, Any]]:
  """The k most used new prompts of a method with their use, accuracy and purity."""
  uses: dict[str, list[float]] = collections.defaultdict(list)
  for p, c in zip(prompts, correct):
    if is_new_text(p, sources):
      uses[p].append(float(c))
  out = []
  for p in sorted(uses, key=lambda p: (-len(uses[p]), p))[:k]:
    row: dict[str, Any] = {"prompt": p, "queries": len(uses[p]),
                           "accuracy": float(np.mean(uses[p]))}
    if p in purity:
      pu = purity[p]
      row.update(purity=pu.purity, majority=label_names[pu.majority] if label_names else
                 pu.majority, purity_queries=pu.n)
    out.append(row)
  return out
