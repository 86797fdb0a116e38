"""Write a prompt for a query with an exported QPO policy, in PyTorch (no qpo_jax needed).

  python qpo/generate_prompt.py "I just got the job, best day ever!" [--return 100]

Needs torch, transformers and safetensors. Run from anywhere: the export directory is
the parent of this file's folder. It is the policy qpo_jax trained, step by step:

  e(R)    = LayerNorm(segment[0]) + return_embed(R / 100)
  query   = LayerNorm(token_embedding(q) + segment[1]), q = the query's tokens without
            special tokens, the first `query_len` of them (qpo.json)
  prompt  = LayerNorm(token_embedding(p) + segment[2]) for each prompt token fed back
  LayerNorm: epsilon 1e-6, with `input_norm`'s scale and bias
  logits  = the backbone's output head applied to ReLU(prompt_proj(hidden)), predicting
            p_1 at the last query token and p_t at p_{t-1}
  greedy decoding (argmax) until the tokenizer's EOS token or `prompt_len` tokens;
  the prompt is the decoded tokens before EOS, special tokens skipped.

qpo_jax runs this on right-padded batches whose padding is masked out of attention and
positions; one query alone needs no padding and gives the same tokens.
"""

import argparse
import json
import os

import torch
from safetensors.torch import load_file
import transformers

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN_EPS = 1e-6  # flax.linen.LayerNorm's default, what the policy was trained with


def load(directory=HERE):
  """(backbone LM, QPO head tensors, tokenizer, qpo.json) of an exported policy."""
  lm = transformers.AutoModelForCausalLM.from_pretrained(directory,
                                                         torch_dtype=torch.float32).eval()
  heads = load_file(os.path.join(directory, "qpo", "heads.safetensors"))
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  with open(os.path.join(directory, "qpo", "qpo.json")) as f:
    meta = json.load(f)
  return lm, heads, tokenizer, meta


@torch.no_grad()
def write_prompt(lm, heads, tokenizer, meta, query, target_return=None):
  """The policy's greedy prompt for `query`, conditioned on R* (default: qpo.json's)."""
  r = float(meta.get("target_return", 100.0) if target_return is None else target_return)
  seg = heads["segment/embedding"]

  def norm(x):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], heads["input_norm/scale"],
                                          heads["input_norm/bias"], LN_EPS)

  def text(ids, segment):
    return norm(lm.get_input_embeddings()(ids) + seg[segment])

  def head(hidden):
    proj = torch.relu(hidden @ heads["prompt_proj/kernel"] + heads["prompt_proj/bias"])
    return lm.get_output_embeddings()(proj)

  ret = norm(seg[0]) + (r / 100.0) * heads["return_embed/kernel"][0] + heads["return_embed/bias"]
  ids = tokenizer(query, add_special_tokens=False)["input_ids"][:int(meta["query_len"])]
  embeds = torch.cat([ret[None], text(torch.tensor(ids, dtype=torch.long), 1)])[None]
  out = lm.base_model(inputs_embeds=embeds, use_cache=True)
  cache, hidden = out.past_key_values, out.last_hidden_state[:, -1]
  prompt = []
  for _ in range(int(meta["prompt_len"])):
    token = int(head(hidden).argmax(-1))
    if token == tokenizer.eos_token_id:
      break
    prompt.append(token)
    out = lm.base_model(inputs_embeds=text(torch.tensor([[token]]), 2), past_key_values=cache,
                        use_cache=True)
    cache, hidden = out.past_key_values, out.last_hidden_state[:, -1]
  return tokenizer.decode(prompt, skip_special_tokens=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("query", nargs="+", help="one or more queries")
  parser.add_argument("--return", dest="target_return", type=float, default=None,
                      help="R*, the normalised return to condition on (default: qpo.json's)")
  args = parser.parse_args()
  lm, heads, tokenizer, meta = load()
  for q in args.query:
    print(json.dumps({"query": q, "prompt": write_prompt(lm, heads, tokenizer, meta, q,
                                                         args.target_return)}))


if __name__ == "__main__":
  main()
