"""Text to token ids, one place for every caller: the model's chat turn, special tokens,
the pad and stop ids, and the policy's fixed-width (query, prompt) rows."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def encode(tokenizer, text: str, with_offsets: bool = False):
  """Token ids of `text` (and each token's start offset in `text` with `with_offsets`).

  Special tokens are added unless the text already starts with BOS (a chat
  template writes its own), so local scoring and the server agree.
  """
  bos = getattr(tokenizer, "bos_token", None)
  add = not (bos and text.startswith(bos))
  enc = tokenizer(text, add_special_tokens=add, return_offsets_mapping=with_offsets)
  if with_offsets:
    return enc["input_ids"], [start for start, _ in enc["offset_mapping"]]
  return enc["input_ids"]


def chat_text(tokenizer, user_text: str, chat: bool = True) -> str:
  """The text the model continues: the chat template's user turn, or the raw text."""
  if chat and getattr(tokenizer, "chat_template", None):
    return tokenizer.apply_chat_template([{"role": "user", "content": user_text}],
                                         tokenize=False, add_generation_prompt=True)
  return user_text


def chat_prompt(tokenizer, user_text: str) -> list[int]:
  """Token ids of a single user turn in the model's chat template (plain text without one)."""
  return encode(tokenizer, chat_text(tokenizer, user_text))


def pad_id(tokenizer) -> int:
  """The id used for padding: the tokenizer's pad token, else its EOS."""
  return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def stop_ids(tokenizer) -> list[int]:
  """Ids that end a generation: EOS and the pad token."""
  return sorted({i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None})


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  """Each text's token ids, without special tokens (nothing cut)."""
  if not texts:
    return []
  return [list(t) for t in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def padded(tokenizer, encoded: Sequence[Sequence[int]], length: int, append_eos: bool
           ) -> tuple[np.ndarray, np.ndarray]:
  """[N, length] ids and masks of `token_ids`' output, cut to `length` and right-padded;
  with `append_eos` each row ends in EOS."""
  ids = np.full((len(encoded), length), pad_id(tokenizer), np.int32)
  mask = np.zeros((len(encoded), length), bool)
  for i, toks in enumerate(encoded):
    toks = list(toks)[:length - 1 if append_eos else length]
    if append_eos:
      toks.append(tokenizer.eos_token_id)
    ids[i, :len(toks)], mask[i, :len(toks)] = toks, True
  return ids, mask


def tokenize(tokenizer, texts: Sequence[str], length: int, append_eos: bool
             ) -> tuple[np.ndarray, np.ndarray]:
  """[N, length] ids and masks, right-padded; with `append_eos` the text ends in EOS."""
  return padded(tokenizer, token_ids(tokenizer, texts), length, append_eos)


def token_counts(tokenizer, texts: Sequence[str]) -> np.ndarray:
  """[N] each text's number of tokens, without special tokens (what `tokenize` would keep
  if `length` were unbounded)."""
  return np.asarray([len(t) for t in token_ids(tokenizer, texts)], np.int64)


def check_prompt_lengths(tokenizer, prompts: Sequence[str], prompt_len: int) -> None:
  """Fails, naming the prompt, if `train.prompt_len` cannot hold a prompt and its EOS."""
  if not prompts:
    return
  lengths = token_counts(tokenizer, prompts)
  i = int(np.argmax(lengths))
  if lengths[i] + 1 > prompt_len:
    raise ValueError(f"train.prompt_len={prompt_len} cannot hold the source prompt "
                     f"{prompts[i]!r} ({lengths[i]} tokens + EOS); set train.prompt_len to at "
                     f"least {lengths[i] + 1}")
