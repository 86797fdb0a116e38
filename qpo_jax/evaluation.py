"""Evaluating (query, prompt) pairs on a target, through the cache, for any task and setting.

A pair is rendered once per demonstration set (zero-shot: one empty set); each
rendered text is one target call. Calls already in the cache are not made
again; new ones go to the target ordered by instruction and demonstration
set, then by length, so a local target's batches share their common prefix
and pad little (scoring.py); results are written to the cache chunk by chunk,
so a killed run loses at most one chunk. Each pair gives an `Outcome`
(rewards.py): the choice made and its NLLs, the math answer and its response,
or the few-shot correctness under each demonstration set.

Over several processes, each renders (and a local target tokenises) only its
share of the pairs and of every chunk of calls; the target runs a chunk as one
collective call and the results are gathered, so every process caches and
returns the same outcomes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from absl import logging
import numpy as np

from qpo_jax import distributed
from qpo_jax.eval_cache import EvalCache, cache_key
from qpo_jax.rewards import Outcome
from qpo_jax.tasks.base import CHOICE, Example, Task, demos_id, extract_answer, numbers_equal
from qpo_jax.utils import progress_bar
from qpo_jax.targets import Target, TargetError

ZERO_SHOT, FEW_SHOT = "zero_shot", "few_shot"
SETTINGS = (ZERO_SHOT, FEW_SHOT)


@dataclasses.dataclass(frozen=True)
class _Call:
  key: str
  length: int  # characters of the rendered text (the batching order)
  pair: int  # index of the (example, prompt) pair
  demo_set: int  # index of the demonstration set (zero-shot: 0, the empty set)


@dataclasses.dataclass(frozen=True)
class _Pairs:
  """A stage's pairs and demonstration sets, and how a call is rendered from them."""

  task: Task
  pairs: Sequence[tuple[Example, str]]
  sets: Sequence[Sequence[Example]]
  set_ids: tuple[str, ...]

  @classmethod
  def of(cls, task: Task, pairs, setting: str, demo_sets) -> _Pairs:
    if setting not in SETTINGS:
      raise ValueError(f"setting {setting!r} is not one of {SETTINGS}")
    if setting == FEW_SHOT and not demo_sets:
      raise ValueError("the few-shot setting needs demonstration sets")
    sets = list(demo_sets) if setting == FEW_SHOT else [()]
    return cls(task, pairs, sets, tuple(demos_id(d) for d in sets))

  def render(self, pair: int, demo_set: int) -> tuple[str, tuple[str, ...]]:
    ex, prompt = self.pairs[pair]
    text = self.task.render(ex, prompt, self.sets[demo_set])
    return text, tuple(self.task.options(ex)) if self.task.kind == CHOICE else ()

  def render_calls(self, calls: Sequence[_Call]) -> list[tuple[str, tuple[str, ...]]]:
    return [self.render(c.pair, c.demo_set) for c in calls]

  def group(self, c: _Call) -> tuple[str, str, int]:
    """Sort key: calls of one instruction and demonstration set share a prefix."""
    return self.pairs[c.pair][1], self.set_ids[c.demo_set], c.length


def _calls(work: _Pairs, target: Target, setting: str) -> list[list[_Call]]:
  """Each pair's calls (one per demonstration set), keyed by their rendered text.

  Over several processes each renders its share of the pairs; the keys are gathered.
  """
  task, n_sets = work.task, len(work.sets)

  def my_share() -> list[list[Any]]:
    out = []
    for p in distributed.share(len(work.pairs)):
      ex, prompt = work.pairs[p]
      for s in range(n_sets):
        text, options = work.render(p, s)
        out.append([cache_key(target.identity, task.name, setting, ex.query, prompt,
                              work.set_ids[s], text, list(options)), len(text)])
    return out

  flat = distributed.allgather(distributed.agree(my_share))
  return [[_Call(*flat[p * n_sets + s], p, s) for s in range(n_sets)]
          for p in range(len(work.pairs))]


def _run_missing(work: _Pairs, target: Target, calls: Sequence[_Call], cache: EvalCache,
                 chunk: int, max_new_tokens: int) -> None:
  """Runs the calls chunk by chunk and caches the results.

  Over several processes each chunk is split in process order: each renders its share,
  the target runs them as one collective call (LocalTarget: one global batch set), and
  the results are gathered so every process caches the same.
  """
  bar = progress_bar(total=len(calls), desc="target calls", unit="call", leave=False)
  for start in range(0, len(calls), chunk):
    part = calls[start:start + chunk]
    mine = distributed.share(len(part))
    rendered = distributed.agree(functools.partial(work.render_calls, part[mine.start:mine.stop]))
    texts = [text for text, _ in rendered]
    if work.task.kind == CHOICE:
      nll, prompt_tokens = target.score_options(texts, [list(o) for _, o in rendered])
      local = [{"nll": [float(x) for x in row]} for row in nll]
      generated = 0
    else:
      gens = target.generate(texts, max_new_tokens)
      local = [{"response": g.text, "nll": float(g.nll)} for g in gens]
      prompt_tokens = sum(g.prompt_tokens for g in gens)
      generated = sum(g.generated_tokens for g in gens)
    gathered = distributed.allgather([[local, int(prompt_tokens), int(generated)]])
    results = [r for share, _, _ in gathered for r in share]
    _check_results(work, target, part, results)
    cache.put_many({c.key: r for c, r in zip(part, results)}, target.identity, len(part),
                   sum(g[1] for g in gathered), sum(g[2] for g in gathered))
    bar.update(len(part))
    logging.debug("evaluated %d/%d new target calls", start + len(part), len(calls))
  bar.close()


def _check_results(work: _Pairs, target: Target, calls: Sequence[_Call],
                   results: Sequence[dict[str, Any]]) -> None:
  """Raises TargetError, naming the target and the pair, on a result that is not an answer:
  a wrong number of option NLLs or a non-finite NLL. Nothing of the chunk is cached, so no
  such value reaches a dataset, the cache or a reward normaliser."""
  if len(results) != len(calls):
    raise TargetError(f"target {target.identity} returned {len(results)} results for "
                      f"{len(calls)} calls")
  for c, r in zip(calls, results):
    nll = np.asarray(r["nll"], np.float64).reshape(-1)
    problem = ""
    n_options = len(work.task.options(work.pairs[c.pair][0])) if work.task.kind == CHOICE else 0
    if work.task.kind == CHOICE and len(nll) != n_options:
      problem = f"{len(nll)} option NLLs for {n_options} options"
    elif not np.isfinite(nll).all():
      problem = f"a non-finite NLL ({r['nll']})"
    if problem:  # rendered again only for the message: a pair is rendered to key it and to run it
      text, options = work.render(c.pair, c.demo_set)
      raise TargetError(f"target {target.identity} gave {problem} for the pair (query "
                        f"{work.pairs[c.pair][0].uid}, prompt {work.pairs[c.pair][1]!r}): "
                        f"{text[:300]!r}" + (f" with options {list(options)}" if options else ""))


def _outcome(task: Task, ex: Example, raw: dict[str, Any]) -> Outcome:
  if task.kind == CHOICE:
    nll = np.asarray(raw["nll"], np.float64)
    pred = int(np.argmin(nll))
    return Outcome(correct=float(pred == ex.label), pred=pred,
                   option_nll=tuple(float(x) for x in raw["nll"]), gold_nll=float(nll[ex.label]))
  answer = extract_answer(raw["response"])
  return Outcome(correct=float(numbers_equal(answer, ex.answer)), answer=answer,
                 response=raw["response"], response_nll=float(raw["nll"]))


def evaluate_pairs(task: Task, target: Target, pairs: Sequence[tuple[Example, str]], *,
                   setting: str = ZERO_SHOT, demo_sets: Sequence[Sequence[Example]] = (),
                   cache: EvalCache | None = None, chunk: int = 256,
                   max_new_tokens: int = 256) -> list[Outcome]:
  """The `Outcome` of each (example, prompt) pair, in order."""
  cache = cache if cache is not None else EvalCache(None)
  work = _Pairs.of(task, pairs, setting, demo_sets)
  calls = _calls(work, target, setting)
  flat = {c.key: c for row in calls for c in row}
  have = cache.get_many(list(flat))
  missing = [c for k, c in flat.items() if k not in have]
  if missing:
    logging.info("%d of %d target calls are new (%d cached)", len(missing), len(flat), len(have))
    missing.sort(key=work.group)
    _run_missing(work, target, missing, cache, chunk, max_new_tokens)
    have.update(cache.get_many([c.key for c in missing]))
  outcomes = []
  for (ex, _), row in zip(pairs, calls):
    per_set = [_outcome(task, ex, have[c.key]) for c in row]
    if setting == ZERO_SHOT:
      outcomes.append(per_set[0])
    else:
      outcomes.append(Outcome(per_set=tuple(int(o.correct) for o in per_set)))
  return outcomes


def raw_results(task: Task, target: Target, pairs: Sequence[tuple[Example, str]], *,
                cache: EvalCache | None = None, chunk: int = 256,
                max_new_tokens: int = 256) -> list[dict[str, Any]]:
  """The target's zero-shot result per pair (option NLLs, or response), through the cache.

  For queries without a gold answer (a user's own); `evaluate_pairs` scores them.
  """
  cache = cache if cache is not None else EvalCache(None)
  work = _Pairs.of(task, pairs, ZERO_SHOT, ())
  calls = [row[0] for row in _calls(work, target, ZERO_SHOT)]
  have = cache.get_many(list({c.key for c in calls}))
  missing = list({c.key: c for c in calls if c.key not in have}.values())
  if missing:
    missing.sort(key=work.group)
    _run_missing(work, target, missing, cache, chunk, max_new_tokens)
    have.update(cache.get_many([c.key for c in missing]))
  return [have[c.key] for c in calls]


def accuracy(outcomes: Sequence[Outcome]) -> float:
  """Mean correctness (zero-shot) or mean per-query few-shot accuracy."""
  if not outcomes:
    return float("nan")
  return float(np.mean([o.accuracy for o in outcomes]))
