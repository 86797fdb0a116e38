"""Collection that explores on purpose: which new prompts a loop spends target calls on.

The spec's collection evaluates the policy's sampled prompt on the query it was
sampled for, with the whole batch's accuracy as avg_acc. A policy that learnt
to pick source prompts then mostly samples them again, and a new prompt seen on
one query cannot be compared with the pool. Here a loop:

  1. samples `sample.num_samples` candidates per collect query from round t's
     policy (the collection sampler);
  2. drops verbatim repeats of prompts the dataset already holds (they are
     never rescored) and junk: prompts whose mean token NLL under the policy's
     pretrained LM is above the `loop.junk_quantile` quantile of the source
     prompts' (fluent text only; the source prompts set the scale);
  3. ranks what is left by a critic, the reward model (baselines.py) trained
     on D_{t-1}, on the query each candidate was sampled for, and keeps the
     best `loop.new_prompts`;
  4. scores each kept prompt on its own queries and on `loop.prompt_queries`
     class-balanced D_0 queries, the same for every kept prompt, where every
     source prompt was scored too: its avg_acc is then over a sample of the
     same queries as the pool's, and on those queries the expert filter can
     compare it with every source prompt. Every outcome is kept, failures with
     their low returns.

`plan` returns the (query, prompt) pairs to evaluate; loop.py evaluates, rewards
and merges them. The candidates, their NLL and critic scores go into the loop's
collect plan, so a rerun after a kill evaluates the same pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from qpo_jax import scoring
from qpo_jax.baselines import RewardModel, TextEmbedder
from qpo_jax.store.records import Record
from qpo_jax.tasks.base import Example, sample_queries


def prompt_nll(lm, prompts: Sequence[str], batch_size: int = 16) -> np.ndarray:
  """Mean token NLL of each prompt under `lm`, after BOS (the empty prompt: 0)."""
  tok = lm.tokenizer
  bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
  seqs = [bos + list(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
  out = np.zeros(len(prompts))
  scored = [i for i, s in enumerate(seqs) if len(s) > len(bos) and len(s) > 1]
  lps = scoring.sequence_logprobs(lm, [seqs[i] for i in scored], batch_size=batch_size,
                                  length_multiple=16)
  for i, lp in zip(scored, lps):
    out[i] = -float(np.mean(lp[1:]))
  return out


@dataclasses.dataclass(frozen=True)
class Candidate:
  prompt: str
  queries: tuple[int, ...]  # collect queries it was sampled for
  nll: float
  critic: float  # the critic's best logit over its queries


def candidates(samples: Sequence[Sequence[str]], known: set[str]) -> dict[str, list[int]]:
  """New prompt texts -> the collect queries they were sampled for (repeats of `known`
  and empty texts dropped), in first-seen order."""
  out: dict[str, list[int]] = {}
  for i, ps in enumerate(samples):
    for p in ps:
      if p.strip() and p not in known:
        out.setdefault(p, [])
        if i not in out[p]:
          out[p].append(i)
  return out


def plan(*, samples: Sequence[Sequence[str]], queries: Sequence[Example],
         dataset_records: Sequence[Record], source_prompts: Sequence[str], lm,
         train: Sequence[Example], new_prompts: int, prompt_queries: int, junk_quantile: float,
         seed: int, max_words: int) -> tuple[list[tuple[Example, str]], dict[str, Any]]:
  """The pairs a loop evaluates (module docstring, steps 2-4) and what was decided, for the
  collect plan and the report."""
  known = {r.prompt for r in dataset_records}
  found = candidates(samples, known)
  texts = list(found)
  nll = prompt_nll(lm, texts) if texts else np.zeros(0)
  source_nll = prompt_nll(lm, [p for p in source_prompts if p.strip()])
  limit = float(np.quantile(source_nll, junk_quantile)) if len(source_nll) else np.inf
  fluent = [i for i in range(len(texts)) if nll[i] <= limit]
  kept: list[Candidate] = []
  if fluent:
    critic = RewardModel(TextEmbedder(lm), seed=seed)
    critic.fit(dataset_records)
    flat = [(i, q) for i in fluent for q in found[texts[i]]]
    got = critic.pair_scores([queries[q].query for _, q in flat], [texts[i] for i, _ in flat])
    best: dict[int, float] = {}
    for (i, _), v in zip(flat, got):
      best[i] = max(best.get(i, -np.inf), float(v))
    logits = [best[i] for i in fluent]
    order = sorted(range(len(fluent)), key=lambda j: (-logits[j], fluent[j]))[:new_prompts]
    kept = [Candidate(texts[fluent[j]], tuple(found[texts[fluent[j]]]), float(nll[fluent[j]]),
                      logits[j]) for j in order]
  in_d0 = {r.query_id or r.query for r in dataset_records if r.loop == 0}
  shared = sample_queries([ex for ex in train if ex.uid in in_d0 or ex.query in in_d0],
                          prompt_queries, seed=seed, max_words=max_words) if kept else []
  pairs = [(queries[q], c.prompt) for c in kept for q in c.queries]
  pairs += [(ex, c.prompt) for c in kept for ex in shared]
  info = {"sampled": sum(len(s) for s in samples), "new_texts": len(texts),
          "junk": len(texts) - len(fluent), "nll_limit": limit,
          "kept": [dataclasses.asdict(c) for c in kept], "shared_queries": [ex.uid for ex in shared]}
  return pairs, info
