"""Collection that explores on purpose: which new prompts a loop spends target calls on.

The spec's collection evaluates the policy's sampled prompt on the query it was
sampled for, with the whole batch's accuracy as avg_acc. A policy that learnt
to pick source prompts then mostly samples them again, and a new prompt seen on
one query cannot be compared with the pool. Here a loop:

  1. samples `sample.num_samples` prompts per collect query from round t's
     policy (every distinct (query, prompt) is scored: it is what the spec's
     collection learns from), and takes the `loop.parents` prompts the expert
     filter keeps for the most queries of D_{t-1} (what the policy learnt to
     write) as parents of new texts: `loop.rewrites` rewrites of each by the
     policy's pretrained LM (an instruction-tuned model, no target calls), and
     `loop.edits` GrIPS-style phrase edits (swap, delete, add, cross over; a
     policy that learnt to copy the pool samples the pool again, edits do not);
  2. drops verbatim repeats of prompts the dataset already holds (never
     rescored), texts longer than the policy's prompt length, and junk: prompts
     whose mean token NLL under the policy's pretrained LM is above the
     `loop.junk_quantile` quantile of the source prompts' (the sources set the
     scale);
  3. if more than `loop.max_screen` remain, a critic (the reward model of
     baselines.py trained on D_{t-1}: no target calls) keeps the
     `loop.max_screen` it scores best over their own and the screening queries;
  4. screens each on `loop.screen_queries` class-balanced D_0 queries, where
     every source prompt was scored too, and keeps the `loop.new_prompts` with
     the largest `group_gain` over the pool (measured: the critic's ranking
     did not predict it, Spearman -0.25 over 96 edits on TweetEval);
  5. scores each kept prompt on the rest of `loop.prompt_queries` shared D_0
     queries (0: all of D_0's), so its avg_acc is over the same queries for every
     kept prompt and the expert filter can compare it with every source prompt
     there: a new prompt the policy is to learn needs many queries it wins on. Every
     outcome is kept, failures and screened-out prompts with their low returns.

`plan` returns the (query, prompt) pairs to evaluate; loop.py evaluates, rewards
and merges them. The candidates, their NLL and screening figures go into the
loop's collect plan, so a rerun after a kill evaluates the same pairs (the
screening's own calls come from the evaluation cache).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Callable, Sequence

import numpy as np

from qpo_jax import decoding, scoring
from qpo_jax.baselines import RewardModel, TextEmbedder
from qpo_jax.rewards import Outcome
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


# Phrase boundaries for edits: punctuation, and "or"/"and" between words. A
# constituency parser (as GrIPS uses) is not needed for short instructions; the
# separators are kept where they stand, so edits move or drop phrases only.
_SEPARATOR = re.compile(r"(\s*(?:[,;:/?!()\[\]]|\.(?=\s|$))\s*|\s+(?:or|and)\s+)", re.I)


def phrases(prompt: str) -> list[str]:
  """[phrase, separator, phrase, ..., phrase]: the prompt cut at `_SEPARATOR` (joined back
  it is the prompt)."""
  return _SEPARATOR.split(prompt)


def _joined(parts: Sequence[str]) -> str:
  return re.sub(r"\s+", " ", "".join(parts)).strip()


def edit(parts: Sequence[str], donor: Sequence[str], rng: np.random.Generator) -> str:
  """One GrIPS-style edit (Prasad et al. 2022) of a prompt cut into `phrases`: swap two of
  its phrases, delete one (with the separator after it, or before it at the end), add a
  phrase of `donor` before one of its phrases, or cross over (its phrases up to a
  separator, then `donor`'s from one). Returns "" when the edit cannot apply."""
  slots = [i for i in range(0, len(parts), 2) if parts[i].strip()]
  donor_slots = [i for i in range(0, len(donor), 2) if donor[i].strip()]
  op = rng.integers(4)
  out = list(parts)
  if op == 0 and len(slots) >= 2:
    i, j = rng.choice(slots, 2, replace=False)
    out[i], out[j] = parts[j], parts[i]
  elif op == 1 and len(slots) >= 2:
    i = int(rng.choice(slots))
    cut = slice(i, i + 2) if i + 1 < len(out) else slice(i - 1, i + 1)
    del out[cut]
  elif op == 2 and slots and donor_slots:
    i, j = int(rng.choice(slots)), int(rng.choice(donor_slots))
    sep = next((s for s in parts[1::2] if s.strip()), ", ")
    out[i:i] = [donor[j], sep]
  elif op == 3 and len(parts) > 1 and len(donor) > 1:
    i, j = int(rng.choice(range(1, len(parts), 2))), int(rng.choice(range(1, len(donor), 2)))
    out = list(parts[:i]) + list(donor[j:])
  else:
    return ""
  return _joined(out)


def edits(prompts: Sequence[str], count: int, seed: int, max_tries: int = 20) -> list[str]:
  """Up to `count` distinct new texts, each one edit of a random prompt of `prompts` (the
  donor another random one); texts equal to a parent dropped."""
  parents = [p for p in dict.fromkeys(prompts) if p.strip()]
  if not parents:
    return []
  cut = {p: phrases(p) for p in parents}
  rng = np.random.default_rng(seed)
  out: dict[str, None] = {}
  for _ in range(count * max_tries):
    if len(out) >= count:
      break
    a, b = rng.choice(len(parents), 2) if len(parents) > 1 else (0, 0)
    text = edit(cut[parents[a]], cut[parents[b]], rng)
    if text and text not in cut and len(text.split()) >= 2:
      out.setdefault(text)
  return list(out)


def parent_prompts(kept: Sequence[Record], records: Sequence[Record], k: int) -> list[str]:
  """The k prompts the expert filter keeps for the most queries (what the policy learns to
  write; ties: accuracy over `records`, then text); the empty prompt is not a parent."""
  queries: dict[str, set[str]] = collections.defaultdict(set)
  for r in kept:
    if r.prompt.strip():
      queries[r.prompt].add(r.query_id or r.query)
  hits: dict[str, list[float]] = collections.defaultdict(list)
  for r in records:
    hits[r.prompt].append(float(r.accuracy))
  return sorted(queries, key=lambda p: (-len(queries[p]), -np.mean(hits[p] or [0.0]), p))[:k]


def group_gain(candidate: Sequence[float], pool: dict[str, dict[int, float]],
               groups: Sequence[int]) -> float:
  """How much a candidate adds to the pool for some group of queries (their gold label in
  choice tasks; one group otherwise): max over groups of its accuracy there minus the best
  pool prompt's on the same queries. A query-dependent prompter needs prompts that are the
  best for some queries, not prompts that are good on average."""
  best = -np.inf
  for g in sorted(set(groups)):
    rows = [i for i, x in enumerate(groups) if x == g]
    pool_best = max((np.mean([acc[i] for i in rows if i in acc]) for acc in pool.values()
                     if any(i in acc for i in rows)), default=0.0)
    best = max(best, float(np.mean([candidate[i] for i in rows])) - float(pool_best))
  return best


@dataclasses.dataclass(frozen=True)
class Candidate:
  prompt: str
  origin: str  # sample (the policy's), rewrite (the LM's) or edit
  queries: tuple[int, ...]  # collect queries it was sampled for (none: a rewrite or edit)
  nll: float
  screen_accuracy: float  # on the screening queries
  gain: float  # group_gain on the screening queries


def candidates(samples: Sequence[Sequence[str]], known: set[str],
               written: Sequence[str] = ()) -> dict[str, list[int]]:
  """New prompt texts -> the collect queries they were sampled for (repeats of `known`
  and empty texts dropped; a rewrite or edit has none), in first-seen order."""
  out: dict[str, list[int]] = {}
  for i, ps in enumerate(samples):
    for p in ps:
      if p.strip() and p not in known:
        out.setdefault(p, [])
        if i not in out[p]:
          out[p].append(i)
  for p in written:
    if p.strip() and p not in known:
      out.setdefault(p, [])
  return out


def plan(*, samples: Sequence[Sequence[str]], queries: Sequence[Example],
         dataset_records: Sequence[Record], kept_records: Sequence[Record],
         source_prompts: Sequence[str], lm, train: Sequence[Example],
         score: Callable[[list[tuple[Example, str]]], list[Outcome]], new_prompts: int,
         prompt_queries: int, screen_queries: int, max_screen: int, junk_quantile: float,
         seed: int, max_words: int, task_description: str = "", parents: int = 0,
         rewrites_per_prompt: int = 0, num_edits: int = 0, max_prompt_tokens: int = 64
         ) -> tuple[list[tuple[Example, str]], dict[str, Any]]:
  """The pairs a loop evaluates (module docstring, steps 1-5) and what was decided, for the
  collect plan and the report. `score` evaluates pairs on the target (through the cache)."""
  known = {r.prompt for r in dataset_records}
  tops = parent_prompts(kept_records, dataset_records, parents)
  rewritten = rewrites(lm, tops, task_description, rewrites_per_prompt,
                       max_tokens=max_prompt_tokens, seed=seed) if rewrites_per_prompt else []
  tok = lm.tokenizer
  edited = [e for e in edits(tops, num_edits, seed=seed)
            if len(tok(e, add_special_tokens=False)["input_ids"]) <= max_prompt_tokens]
  found = candidates(samples, known, rewritten + edited)
  origin = {p: "rewrite" for p in rewritten} | {p: "edit" for p in edited}
  origin |= {p: "sample" for p, qs in found.items() if qs}
  texts = list(found)
  nll = prompt_nll(lm, texts) if texts else np.zeros(0)
  source_nll = prompt_nll(lm, [p for p in source_prompts if p.strip()])
  limit = float(np.quantile(source_nll, junk_quantile)) if len(source_nll) else np.inf
  fluent = [i for i in range(len(texts)) if nll[i] <= limit]
  in_d0 = {r.query_id or r.query for r in dataset_records if r.loop == 0}
  d0_train = [ex for ex in train if ex.uid in in_d0 or ex.query in in_d0]  # D_0's queries
  shared = sample_queries(d0_train, prompt_queries or len(d0_train), seed=seed,
                          max_words=max_words)
  screen = shared[:screen_queries]  # class-balanced: sample_queries interleaves the labels
  critic_rank = None
  if len(fluent) > max_screen:  # the critic spends no target calls: it picks what is screened
    critic = RewardModel(TextEmbedder(lm), seed=seed)
    critic.fit(dataset_records)
    flat = [(i, queries[q].query) for i in fluent for q in found[texts[i]]]
    flat += [(i, ex.query) for i in fluent for ex in screen]
    got = critic.pair_scores([q for _, q in flat], [texts[i] for i, _ in flat])
    logits: dict[int, list[float]] = collections.defaultdict(list)
    for (i, _), v in zip(flat, got):
      logits[i].append(float(v))
    fluent = sorted(fluent, key=lambda i: (-np.mean(logits[i]), i))[:max_screen]
    critic_rank = {texts[i]: float(np.mean(logits[i])) for i in fluent}
  outcomes = score([(ex, texts[i]) for i in fluent for ex in screen])
  uid_row = {ex.uid: j for j, ex in enumerate(screen)}
  pool: dict[str, dict[int, float]] = collections.defaultdict(dict)
  for r in dataset_records:
    if r.query_id in uid_row:
      pool[r.prompt][uid_row[r.query_id]] = float(r.accuracy)
  groups = [ex.label if ex.label is not None else 0 for ex in screen]
  screened = []
  for j, i in enumerate(fluent):
    acc = [float(o.accuracy) for o in outcomes[j * len(screen):(j + 1) * len(screen)]]
    screened.append(Candidate(texts[i], origin[texts[i]], tuple(found[texts[i]]),
                              float(nll[i]), float(np.mean(acc)) if acc else 0.0,
                              group_gain(acc, pool, groups) if acc else 0.0))
  kept = sorted(screened, key=lambda c: (-c.gain, -c.screen_accuracy, c.prompt))[:new_prompts]
  pairs = [(queries[i], p) for i, ps in enumerate(samples) for p in dict.fromkeys(ps)]
  pairs += [(ex, c.prompt) for c in screened for ex in screen]
  pairs += [(ex, c.prompt) for c in kept for ex in shared[len(screen):]]
  info = {"sampled": sum(len(s) for s in samples), "parents": tops,
          "rewrites": len(rewritten), "edits": len(edited), "new_texts": len(texts),
          "junk": len(texts) - len([i for i in range(len(texts)) if nll[i] <= limit]),
          "nll_limit": limit, "critic": critic_rank,
          "screened": [dataclasses.asdict(c) for c in screened],
          "kept": [c.prompt for c in kept], "shared_queries": [ex.uid for ex in shared],
          "screen_queries": len(screen)}
  return pairs, info
