"""The target LLM run locally in JAX: option scoring and greedy math generation.

Both methods take *user texts* (the task's rendered prompt) and apply the
model's chat template themselves when `chat` is on and the tokenizer has one,
so the evaluation code does not care whether the target is local or remote.
Parameters are placed on the mesh by the sharding rules, and every batch is
padded to split over its data axes, so the same code runs a 135M model on a
laptop and a 70B model data- and tensor-parallel on a pod; over several
processes each tokenises its share of the texts and the batches are global.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from qpo_jax import decoding, distributed, scoring, sharding, tokens
from qpo_jax.tokens import chat_text, encode
from qpo_jax.checkpoints.registry import LanguageModel


@dataclasses.dataclass
class Generation:
  """A target's answer: text, mean token NLL of the answer, token counts."""

  text: str
  nll: float
  prompt_tokens: int
  generated_tokens: int


def option_text(option: str, chat: bool, tokenizer) -> str:
  """How an option follows the prefix: as the assistant's reply, or after a space."""
  templated = chat and getattr(tokenizer, "chat_template", None)
  return option if templated else " " + option


class LocalTarget:
  """A `LanguageModel` as a target; `identity` keys the evaluation cache.

  With `reload` (a function returning the same model), `release()` drops the
  parameters while other work needs the memory (a policy round trains between
  two target stages) and the next call that needs them loads them again.
  """

  def __init__(self, lm: LanguageModel, *, chat: bool = True, batch_size: int = 8,
               length_multiple: int = 32, mesh=None, identity: str | None = None,
               reload: Callable[[], LanguageModel] | None = None):
    if lm.tokenizer is None:
      raise ValueError(f"target {lm.name!r} has no tokenizer; set target.tokenizer_path")
    self.chat = chat
    self.batch_size = batch_size
    self.length_multiple = length_multiple
    self.mesh = mesh
    self._reload = reload
    self._lm = self._placed(lm)
    self.identity = identity or f"local:{lm.name}:chat={int(self._templated)}"
    self.eos_ids = tokens.stop_ids(lm.tokenizer)

  def _placed(self, lm: LanguageModel) -> LanguageModel:
    return dataclasses.replace(lm, params=sharding.shard_params(lm.params, self.mesh))

  @property
  def lm(self) -> LanguageModel:
    if self._lm.params is None:
      self._lm = dataclasses.replace(self._lm, params=self._placed(self._reload()).params)
    return self._lm

  def release(self) -> bool:
    """Drops the parameters until the next call needs them; False (kept) without `reload`."""
    if self._reload is None:
      return False
    self._lm = dataclasses.replace(self._lm, params=None)
    return True

  @property
  def _templated(self) -> bool:
    return bool(self.chat and getattr(self._lm.tokenizer, "chat_template", None))

  def prefix_ids(self, user_text: str) -> list[int]:
    tok = self._lm.tokenizer
    return encode(tok, chat_text(tok, user_text, self.chat))

  def option_ids(self, option: str) -> list[int]:
    tok = self._lm.tokenizer
    return tok(option_text(option, self.chat, tok), add_special_tokens=False)["input_ids"]

  def score_options(self, user_texts: Sequence[str],
                    options: Sequence[Sequence[str]]) -> tuple[np.ndarray, int]:
    """[N, K] mean NLL of each option after its user text, and the prompt tokens used.

    Over several processes a collective call: each process passes its share of the
    texts (in process order) and gets its share's results.
    """
    prefixes = [self.prefix_ids(t) for t in user_texts]
    option_ids = [[self.option_ids(o) for o in opts] for opts in options]
    tokens = sum(len(p) + sum(len(o) for o in opts) for p, opts in zip(prefixes, option_ids))
    rows, mine = distributed.allgather_share(list(zip(prefixes, option_ids)))
    nll = scoring.score(self.lm, [p for p, _ in rows], [o for _, o in rows],
                        batch_size=self.batch_size, length_multiple=self.length_multiple,
                        mesh=self.mesh)
    return nll[mine.start:mine.stop], tokens

  def generate(self, user_texts: Sequence[str], max_new_tokens: int) -> list[Generation]:
    """Greedy answers with the KV cache, and the mean NLL of each answer's tokens.

    Over several processes a collective call, as `score_options`.
    """
    tok = self._lm.tokenizer
    prefixes, mine = distributed.allgather_share([self.prefix_ids(t) for t in user_texts])
    answers = decoding.generate_ids(self.lm, prefixes, max_new_tokens=max_new_tokens,
                                    eos_ids=self.eos_ids, batch_size=self.batch_size,
                                    length_multiple=self.length_multiple, mesh=self.mesh)
    full = [p + a for p, a in zip(prefixes, answers)]
    logps = scoring.sequence_logprobs(self.lm, full, batch_size=self.batch_size,
                                      length_multiple=self.length_multiple, mesh=self.mesh)
    results = []
    for i in mine:
      p, a, lp = prefixes[i], answers[i], logps[i]
      nll = float(-lp[len(p):].mean()) if a else 0.0
      results.append(Generation(tok.decode(a, skip_special_tokens=True), nll, len(p), len(a)))
    return results
