"""Collection that explores on purpose: which new prompts a loop spends target calls on.

The spec's collection evaluates the policy's sampled prompt on the query it was
sampled for, with the whole batch's accuracy as avg_acc. A policy that learnt
to pick source prompts then mostly samples them again, and a new prompt seen on
one query cannot be compared with the pool. Here a loop:

  1. samples `sample.num_samples` candidates per collect query from round t's
     policy (the collection sampler), and asks the policy's pretrained LM (an
     instruction-tuned model, no target calls) for `loop.rewrites` rewrites of
     each of the `loop.rewrite_sources` prompts with the best accuracy in
     D_{t-1}, given the task's manual instruction as the task's description: a
     policy that learnt to copy the pool samples the pool again, a rewriter
     does not;
  2. drops verbatim repeats of prompts the dataset already holds (they are
     never rescored) and junk: prompts whose mean token NLL under the policy's
     pretrained LM is above the `loop.junk_quantile` quantile of the source
     prompts' (fluent text only; the source prompts set the scale);
  3. ranks what is left by a critic, the reward model (baselines.py) trained
     on D_{t-1}: its mean logit over the queries a candidate was sampled for
     and `loop.prompt_queries` D_0 queries (the same for every candidate), and
     keeps the best `loop.new_prompts`;
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
import re
from typing import Any, Sequence

import numpy as np

from qpo_jax import decoding, scoring
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


REWRITE_REQUEST = ("Here is an instruction for a task:\n\"{prompt}\"\nThe task: {task}\n"
                   "Write one new, different instruction for the same task. Reply with the "
                   "instruction only.")
_LEAD_IN = re.compile(r"^(here('s| is)|sure|the new|new instruction|rewritten|instruction)"
                      r"[^\n]*:\s*", re.I)


def rewrite_text(reply: str) -> str:
  """The instruction in a rewriter's reply: its first quoted span of three or more words,
  else its first line without a lead-in ('Here is the new instruction: ...')."""
  quoted = [q.strip() for q in re.findall(r'"([^"\n]+)"', reply) if len(q.split()) >= 3]
  if quoted:
    return quoted[0]
  lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
  text = _LEAD_IN.sub("", lines[0]) if lines else ""
  return text.strip().strip('"').strip()


def best_prompts(records: Sequence[Record], k: int) -> list[str]:
  """The k prompts with the best accuracy on D_{t-1}'s train-split records (ties: text)."""
  hits: dict[str, list[float]] = {}
  for r in records:
    if r.split == "train" and r.prompt.strip():
      hits.setdefault(r.prompt, []).append(float(r.correct))
  return sorted(hits, key=lambda p: (-np.mean(hits[p]), p))[:k]


def rewrites(lm, prompts: Sequence[str], task_description: str, per_prompt: int, *,
             max_tokens: int, seed: int, temperature: float = 0.9, top_p: float = 0.95
             ) -> list[str]:
  """`per_prompt` sampled rewrites of each prompt by `lm` (the chat template's user turn),
  cleaned by `rewrite_text`; those of more than `max_tokens` tokens dropped."""
  asks = [REWRITE_REQUEST.format(prompt=p, task=task_description)
          for p in prompts for _ in range(per_prompt)]
  if not asks:
    return []
  replies = decoding.generate_text(lm, asks, max_new_tokens=max_tokens + 16, seed=seed,
                                   temperature=temperature, top_p=top_p, batch_size=16)
  out = [rewrite_text(r) for r in replies]
  tok = lm.tokenizer
  return [t for t in out if t and len(tok(t, add_special_tokens=False)["input_ids"]) <= max_tokens]


@dataclasses.dataclass(frozen=True)
class Candidate:
  prompt: str
  queries: tuple[int, ...]  # collect queries it was sampled for (none: a rewrite)
  nll: float
  critic: float  # the critic's mean logit over its own queries and D_0 probe queries


def candidates(samples: Sequence[Sequence[str]], known: set[str],
               rewritten: Sequence[str] = ()) -> dict[str, list[int]]:
  """New prompt texts -> the collect queries they were sampled for (repeats of `known`
  and empty texts dropped; a rewrite has none), in first-seen order."""
  out: dict[str, list[int]] = {}
  for i, ps in enumerate(samples):
    for p in ps:
      if p.strip() and p not in known:
        out.setdefault(p, [])
        if i not in out[p]:
          out[p].append(i)
  for p in rewritten:
    if p.strip() and p not in known:
      out.setdefault(p, [])
  return out


def plan(*, samples: Sequence[Sequence[str]], queries: Sequence[Example],
         dataset_records: Sequence[Record], source_prompts: Sequence[str], lm,
         train: Sequence[Example], new_prompts: int, prompt_queries: int, junk_quantile: float,
         seed: int, max_words: int, task_description: str = "", rewrite_sources: int = 0,
         rewrites_per_prompt: int = 0, max_prompt_tokens: int = 64
         ) -> tuple[list[tuple[Example, str]], dict[str, Any]]:
  """The pairs a loop evaluates (module docstring, steps 1-4) and what was decided, for the
  collect plan and the report."""
  known = {r.prompt for r in dataset_records}
  rewritten = rewrites(lm, best_prompts(dataset_records, rewrite_sources), task_description,
                       rewrites_per_prompt, max_tokens=max_prompt_tokens, seed=seed) \
      if rewrite_sources and rewrites_per_prompt else []
  found = candidates(samples, known, rewritten)
  in_d0 = {r.query_id or r.query for r in dataset_records if r.loop == 0}
  d0_train = [ex for ex in train if ex.uid in in_d0 or ex.query in in_d0]  # D_0's queries
  texts = list(found)
  nll = prompt_nll(lm, texts) if texts else np.zeros(0)
  source_nll = prompt_nll(lm, [p for p in source_prompts if p.strip()])
  limit = float(np.quantile(source_nll, junk_quantile)) if len(source_nll) else np.inf
  fluent = [i for i in range(len(texts)) if nll[i] <= limit]
  kept: list[Candidate] = []
  if fluent:
    critic = RewardModel(TextEmbedder(lm), seed=seed)
    critic.fit(dataset_records)
    probe = sample_queries(d0_train, prompt_queries, seed=seed + 1, max_words=max_words)
    # every candidate is judged on the same D_0 queries and on its own (a rewrite has none)
    flat = [(i, queries[q].query) for i in fluent for q in found[texts[i]]]
    flat += [(i, ex.query) for i in fluent for ex in probe]
    got = critic.pair_scores([q for _, q in flat], [texts[i] for i, _ in flat])
    scores: dict[int, list[float]] = {}
    for (i, _), v in zip(flat, got):
      scores.setdefault(i, []).append(float(v))
    logits = [float(np.mean(scores[i])) for i in fluent]
    order = sorted(range(len(fluent)), key=lambda j: (-logits[j], fluent[j]))[:new_prompts]
    kept = [Candidate(texts[fluent[j]], tuple(found[texts[fluent[j]]]), float(nll[fluent[j]]),
                      logits[j]) for j in order]
  shared = sample_queries(d0_train, prompt_queries, seed=seed, max_words=max_words) \
      if kept else []
  pairs = [(queries[q], c.prompt) for c in kept for q in c.queries]
  pairs += [(ex, c.prompt) for c in kept for ex in shared]
  info = {"sampled": sum(len(s) for s in samples), "rewrites": len(rewritten),
          "new_texts": len(texts),
          "junk": len(texts) - len(fluent), "nll_limit": limit,
          "kept": [dataclasses.asdict(c) for c in kept], "shared_queries": [ex.uid for ex in shared]}
  return pairs, info
