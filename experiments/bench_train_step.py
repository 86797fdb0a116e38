"""Policy train-step speed: ours (JAX) vs the same step in HF transformers + PyTorch, with MFU.

  .venv/bin/python experiments/bench_train_step.py                      # gpt2-small and smollm2
  .venv/bin/python experiments/bench_train_step.py --policies=gpt2-small --batch=16

Both sides run the prompt decision transformer's step: return/segment embeddings and
LayerNorm in front of the LM (GPT2LMHeadModel or LlamaForCausalLM on the PyTorch side),
the prompt head lm_head(ReLU(Linear)), the return head, CE + lambda * MSE, global-norm
clipping 0.25 and AdamW (lr 1e-3, wd 1e-4), same batch, Lq = Lp = 40 (paper). Weights are
random (speed does not depend on them). MFU is against the f32 matmul peak measured in the
same run. FLOPs per step: 6 x tokens x non-embedding parameters, plus the prompt head's
vocabulary projection and attention (fwd + bwd). The last two columns are the rate of
the MLP's six products at the step's token count in XLA and in PyTorch: each side's
kernel ceiling, which bounds the ratio of the two steps.
Hardware: any; about 10 minutes on the 2-core dev CPU with the defaults (7 with
--steps=3). Writes --out (JSON) and the same name with .md (table).
"""

from __future__ import annotations

import functools
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qpo_jax import sharding
from bench_common import PAPER_TRAIN, best_time, best_times, matmul_peak, run_meta
from qpo_jax.models.config import preset
from qpo_jax.policy import train_step
from qpo_jax.testing import policy_batch
from qpo_jax.policy.model import PromptDT, init_policy
from qpo_jax.utils import write_table

_POLICIES = flags.DEFINE_list("policies", ["gpt2-small", "smollm2-135m"], "policy presets")
_BATCH = flags.DEFINE_list("batch", ["8", "32"], "rows per step (each is timed)")
_LQ = flags.DEFINE_integer("query_len", 40, "query tokens")
_LP = flags.DEFINE_integer("prompt_len", 40, "prompt tokens")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps (after one warm-up step)")
_OUT = flags.DEFINE_string("out", "experiments/results/train_step.json", "JSON output")


def step_flops(cfg, b, lq, lp) -> float:
  t = 1 + lq + lp
  embed = cfg.vocab_size * cfg.d_model + (cfg.max_len * cfg.d_model
                                          if cfg.position == "learned" else 0)
  body = cfg.num_params() - embed - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
  head = b * lp * (cfg.d_model * cfg.vocab_size + cfg.d_model ** 2)
  attention = 2 * 2 * b * t * t * cfg.n_heads * cfg.head_dim * cfg.n_layers
  return 6 * b * t * body + 6 * head + 3 * attention


def time_ours(cfg, batch, steps):
  params = init_policy(cfg, jax.random.key(0))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  step = train_step.make_train_step(cfg, PAPER_TRAIN, 100, params, mesh)
  state, update = step.init(params), step.update
  rng = jax.random.key(0)
  state, m = update(state, batch, rng)  # compile
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(steps):
    state, m = update(state, batch, rng)
  jax.block_until_ready(m)
  return (time.perf_counter() - start) / steps


def breakdown(cfg, batch, steps) -> dict[str, float]:
  """Where our step's time goes: seconds of each part, each jitted and timed alone.

  backbone = inputs (return/segment embeddings, LayerNorm) and the LM body,
  forward + backward; head = prompt head, vocabulary projection and CE over
  the prompt positions, forward + backward (gradients to parameters and
  hidden states); optimizer = clipping + AdamW + the update. They add up to a
  little more than the step (XLA overlaps and fuses across them there).
  """
  params = init_policy(cfg, jax.random.key(0))
  model = PromptDT(cfg)
  b = {k: jnp.asarray(v) for k, v in batch.items()}
  lq = b["query"].shape[1]
  inputs = [b[k] for k in train_step.BATCH_KEYS]
  hidden = nn.apply(lambda m: m.hidden_states(*inputs), model)
  h = jax.eval_shape(lambda p: hidden({"params": p}), params)
  ct = jax.random.normal(jax.random.key(1), h.shape, h.dtype)
  h_prompt = ct[:, lq:-1]

  def backbone_loss(p):
    return jnp.sum(hidden({"params": p}) * ct)

  def head_loss(p, hp):
    logits = nn.apply(lambda m: m.prompt_logits(hp), model)({"params": p})
    return train_step.prompt_ce(logits, b["prompt"], b["prompt_mask"])

  tx = train_step.make_optimizer(PAPER_TRAIN, 100, params)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)

  @jax.jit
  def optimizer(p, o):
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o

  fwd = jax.jit(lambda p: train_step.loss_fn(p, model, b, jax.random.key(0), True)[0])
  bb, hd = jax.jit(jax.grad(backbone_loss)), jax.jit(jax.grad(head_loss, argnums=(0, 1)))
  return best_times({"forward (loss)": lambda: fwd(params), "backbone fwd+bwd": lambda: bb(params),
                     "head+CE fwd+bwd": lambda: hd(params, h_prompt),
                     "optimizer": lambda: optimizer(params, opt_state)}, steps)


def torch_policy(cfg):
  """The same policy in PyTorch around an HF causal LM of the same architecture."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  if cfg.position == "learned":
    hf_cfg = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_len,
                                     n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads)
    lm = transformers.GPT2LMHeadModel(hf_cfg)
    body = lambda x, m: lm.transformer(inputs_embeds=x, attention_mask=m).last_hidden_state  # noqa
  else:
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=cfg.max_len)
    lm = transformers.LlamaForCausalLM(hf_cfg)
    body = lambda x, m: lm.model(inputs_embeds=x, attention_mask=m).last_hidden_state  # noqa
  d = cfg.d_model

  class Policy(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.lm = lm
      self.ret, self.seg = torch.nn.Linear(1, d), torch.nn.Embedding(3, d)
      self.norm, self.proj, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, d), \
          torch.nn.Linear(d, 1)

    def forward(self, returns, query, query_mask, prompt, prompt_mask):
      emb = self.lm.get_input_embeddings()
      seg = self.seg.weight
      x = torch.cat([self.ret(returns[:, None, None]) + seg[0], emb(query) + seg[1],
                     emb(prompt) + seg[2]], 1)
      mask = torch.cat([torch.ones_like(query_mask[:, :1]), query_mask, prompt_mask], 1)
      h = body(self.norm(x), mask.long())
      lq = query.shape[1]
      pred = h[:, lq:-1]  # same shapes as ours (which gathers the last real query slot)
      logits = self.lm.lm_head(torch.relu(self.proj(pred)))
      lp = torch.log_softmax(logits.float(), -1).gather(-1, prompt[..., None])[..., 0]
      m = prompt_mask.float()
      ce = -(lp * m).sum() / m.sum().clamp(min=1)
      mse = ((self.head(h[:, 0])[:, 0] - returns) ** 2).mean()
      lam = 0.5 if float(mse) < 10 else 0.1
      return ce + lam * mse

  return Policy()


def time_torch(cfg, batch, steps):
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = torch_policy(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
  tb = {k: torch.as_tensor(v) for k, v in batch.items()}

  def step():
    opt.zero_grad()
    loss = model(**tb)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    opt.step()
    return float(loss)

  step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - start) / steps


def mlp_gemm_rates(cfg, tokens: int, repeats: int) -> dict[str, float]:
  """FLOP/s of the MLP's six products (forward, input and weight gradients) at a step's
  token count: XLA's (jitted jnp) and PyTorch's kernels, each product timed alone.

  Both steps spend most of their time in these products, so the ratio of the two
  libraries' rates bounds what any JAX-side change to the step can gain over PyTorch.
  """
  import torch  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  d, ff = cfg.d_model, cfg.d_ff
  x, h = rng.standard_normal((tokens, d), np.float32), rng.standard_normal((tokens, ff), np.float32)
  w_in, w_out = rng.standard_normal((d, ff), np.float32), rng.standard_normal((ff, d), np.float32)
  products = [(x, w_in, "nn"), (h, w_out, "nn"), (h, w_in, "nt"), (x, w_out, "nt"),
              (x, h, "tn"), (h, x, "tn")]
  dims = {"nn": "ij,jk->ik", "nt": "ik,jk->ij", "tn": "ji,jk->ik"}
  flops = len(products) * 2 * tokens * d * ff  # each product is tokens x d x ff
  times = {"XLA": 0.0, "PyTorch": 0.0}
  for a, b, kind in products:  # each product alone (XLA would overlap independent ones)
    f, ja, jb = jax.jit(functools.partial(jnp.einsum, dims[kind])), jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    # one library after the other, not interleaved: each runtime's threads spin for a
    # while after its last op and would slow the other's next call
    times["XLA"] += best_time(lambda: f(ja, jb), repeats)
    times["PyTorch"] += best_time(lambda: torch.einsum(dims[kind], ta, tb), repeats)
  return {k: flops / t for k, t in times.items()}


def main(argv):
  del argv
  peak = matmul_peak(5)
  rows = []
  for name, b in [(n, int(b)) for n in _POLICIES.value for b in _BATCH.value]:
    cfg = preset(name)
    lq, lp = _LQ.value, _LP.value
    batch = policy_batch(b, lq, lp, vocab=cfg.vocab_size, shortest=0.5)
    tokens = b * (1 + lq + lp)
    flops = step_flops(cfg, b, lq, lp)
    ours = time_ours(cfg, batch, _STEPS.value)
    theirs = time_torch(cfg, batch, _STEPS.value)
    parts = breakdown(cfg, batch, _STEPS.value)
    gemm = mlp_gemm_rates(cfg, tokens, 3 * _STEPS.value)
    rows.append({"policy": name, "batch": b, "tokens/step": tokens,
                 "ours s/step": ours, "ours tokens/s": tokens / ours,
                 "ours MFU": flops / ours / peak, "torch s/step": theirs,
                 "torch tokens/s": tokens / theirs, "torch MFU": flops / theirs / peak,
                 "speed-up ours/torch": theirs / ours,
                 **{f"ours {k} s": v for k, v in parts.items()},
                 "MLP GEMM GFLOP/s XLA": gemm["XLA"] / 1e9,
                 "MLP GEMM GFLOP/s torch": gemm["PyTorch"] / 1e9})
    print(rows[-1], flush=True)
  cols = list(rows[0])
  print(f"matmul peak {peak / 1e9:.0f} GFLOP/s ({jax.devices()[0].device_kind})")
  print(write_table(_OUT.value, rows, cols, run_meta(peak_flops=peak, steps=_STEPS.value)))


if __name__ == "__main__":
  app.run(main)
