"""KV-cached generation speed: our jitted decoders vs HF transformers `generate`, in one run.

  .venv/bin/python experiments/bench_sampling.py
  .venv/bin/python experiments/bench_sampling.py --batches=1,8,32 --new_tokens=64

SmolLM2-135M-Instruct (the embedded weights, float32) continues real TweetEval
tweets wrapped in its chat template, left-padded to 16-token buckets, for exactly
--new_tokens tokens. EOS neither stops a row nor is banned on either side, so
both do the same work and greedy decoding can agree token for token. Rows, for
each batch size:
  - qpo_jax decoding.generate and HF `model.generate` (PyTorch, use_cache=True),
    greedy and sampled (temperature 1, top-k 2, top-p 0.9: the loop's
    collection settings); prefill is included in the time;
  - the policy's own sampler (`policy.sampling.sample`: the prompt decision
    transformer on the same backbone, [R; query] prefilled into the cache, with the
    same tokens as query, so its prefix is one slot longer).
For greedy decoding the table also gives how many rows and tokens match HF
(float32 on both sides; a near-tie can flip a token and everything after it).
Hardware: any; about 5 minutes on the 2-core dev CPU with the defaults. Writes
--out (JSON) and the same name with .md.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from qpo_jax import decoding, tokens
from bench_common import best_times, run_meta
from qpo_jax.checkpoints.registry import load_model, smollm2_gguf_path
from qpo_jax.policy import sampling
from qpo_jax.policy.model import init_policy
from qpo_jax.sharding import shard_params
from qpo_jax.tasks.paper import package_data
from qpo_jax.utils import write_table

_DATA = flags.DEFINE_string("data_dir", package_data("tweet_emotion"),
                             "TweetEval emotion files (default: the packaged copy)")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "batch sizes")
_NEW = flags.DEFINE_integer("new_tokens", 40, "tokens generated per row (the paper's Lp is 40)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed rounds (round-robin; best is reported)")
_OUT = flags.DEFINE_string("out", "experiments/results/sampling.json", "JSON output ('' for none)")
SAMPLED = dict(temperature=1.0, top_k=2, top_p=0.9)


def matching(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
  """(fraction of rows identical, fraction of tokens before each row's first mismatch)."""
  same = ours == theirs
  prefix = np.where(same.all(1), same.shape[1], np.argmin(same, axis=1))
  return float(same.all(1).mean()), float(prefix.sum() / same.size)


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  lm = load_model({"name": "smollm2-135m-instruct"})
  tok, n_new = lm.tokenizer, _NEW.value
  with open(os.path.join(_DATA.value, "test_text.txt")) as fh:
    texts = [line.strip() for line in fh]
  path = smollm2_gguf_path()
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  ref.generation_config.eos_token_id = None  # like `never` below: EOS neither stops nor is banned
  # on the device once, as the pipeline places them (host arrays are copied in per call)
  policy_params = shard_params(init_policy(lm.cfg, jax.random.key(0), backbone_params=lm.params),
                               None)
  lm = dataclasses.replace(lm, params=shard_params(lm.params, None))
  pad = tokens.pad_id(tok)
  never = jnp.asarray([-1], jnp.int32)  # no token stops a row: fixed work
  rows = []
  for b in map(int, _BATCHES.value):
    seqs = [tokens.chat_prompt(tok, f"Write an instruction for this tweet: {t}")
            for t in texts[:b]]
    ids, mask = decoding.pad_batch(seqs, pad, multiple=16)
    keys = decoding.row_keys(0, range(b))
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    ids_t, mask_t = torch.as_tensor(ids).long(), torch.as_tensor(mask).long()
    returns = jnp.full((b,), 100.0)

    def ours(**kw):
      return decoding.generate(lm.cfg, lm.params, ids_j, mask_j, keys, never, pad,
                               max_new_tokens=n_new, **kw)[0]

    def theirs(**kw):
      with torch.no_grad():
        out = ref.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=n_new,
                           pad_token_id=pad, do_sample=bool(kw), **kw)
      return out[:, ids.shape[1]:].numpy()

    def policy(**kw):
      return sampling.sample(lm.cfg, policy_params, returns, ids_j, mask_j, keys, never, pad,
                             max_len=n_new, **kw)[0]

    timed = [("qpo_jax generate", "greedy", lambda: ours()),
             ("HF generate", "greedy", lambda: theirs()),
             ("qpo_jax generate", "sampled", lambda: ours(**SAMPLED)),
             ("HF generate", "sampled", lambda: theirs(**SAMPLED)),
             ("qpo_jax policy sampler", "sampled", lambda: policy(**SAMPLED))]
    seconds = best_times({(name, mode): fn for name, mode, fn in timed}, _REPEATS.value)
    print(b, {k: round(v, 2) for k, v in seconds.items()}, flush=True)
    rows_same, tokens_same = matching(np.asarray(ours()), theirs())
    for name, mode, _ in timed:
      hf = seconds["HF generate", mode]
      rows.append({"decoder": name, "mode": mode, "batch": b, "prefix tokens": ids.shape[1],
                   "new tokens/s": b * n_new / seconds[name, mode],
                   "s/batch": seconds[name, mode], "HF s / this s": hf / seconds[name, mode]})
    rows.append({"decoder": "greedy agreement with HF", "mode": "greedy", "batch": b,
                 "prefix tokens": ids.shape[1], "new tokens/s": "-", "s/batch": "-",
                 "HF s / this s": f"rows {rows_same:.0%}, tokens {tokens_same:.0%}"})
  meta = run_meta(model="smollm2-135m-instruct (Q4_1 GGUF, dequantized, float32)",
                  new_tokens=n_new, torch_threads=torch.get_num_threads(), sampled=SAMPLED)
  print(meta)
  print(write_table(_OUT.value, rows, list(rows[0]), meta))


if __name__ == "__main__":
  app.run(main)
