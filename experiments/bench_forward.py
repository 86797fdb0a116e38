"""Forward and KV-cached decoding speed of a model, with MFU against this machine's matmul peak.

  .venv/bin/python experiments/bench_forward.py                  # SmolLM2-135M, f32
  .venv/bin/python experiments/bench_forward.py --model=gpt2-small --batch=8 --seq=128

Hardware: any; on the 2-core dev CPU it takes about 2 minutes for SmolLM2.
Prints a Markdown table and writes --out (JSON) and the same name with .md. The peak is the
best of a few large f32 matmuls timed in the same run.
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from qpo_jax import decoding
from bench_common import best_time, matmul_peak, run_meta
from qpo_jax.models import config as config_lib
from qpo_jax.checkpoints.registry import load_model
from qpo_jax.models.transformer import Transformer, init_params
from qpo_jax.sharding import shard_params
from qpo_jax.utils import write_table

_MODEL = flags.DEFINE_string("model", "smollm2", "'smollm2' (embedded weights) or a preset name")
_BATCH = flags.DEFINE_integer("batch", 8, "rows per forward")
_SEQ = flags.DEFINE_integer("seq", 128, "tokens per row")
_NEW = flags.DEFINE_integer("new_tokens", 32, "tokens generated per row in the decoding test")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repetitions (best is reported)")
_OUT = flags.DEFINE_string("out", "experiments/results/forward.json", "JSON output ('' for none)")


def main(argv):
  del argv
  if _MODEL.value == "smollm2":
    lm = load_model({"name": "smollm2-135m-instruct", "dtype": _DTYPE.value})
    cfg, params = lm.cfg, shard_params(lm.params, None)  # on the device once, as the pipeline
  else:
    cfg = config_lib.preset(_MODEL.value, dtype=_DTYPE.value)
    params = init_params(cfg, jax.random.key(0))
  b, t = _BATCH.value, _SEQ.value
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (b, t)), jnp.int32)
  mask = jnp.ones((b, t), bool)
  model = Transformer(cfg)
  forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=model.lm))
  peak = matmul_peak(_REPEATS.value)
  fwd_s = best_time(lambda: forward(params, ids, mask), _REPEATS.value)
  # 2 FLOPs per matmul weight per token (embedding lookups are not matmuls;
  # the output head is), plus attention scores and values.
  lookups = cfg.vocab_size * cfg.d_model * (not cfg.tie_embeddings)
  lookups += cfg.max_len * cfg.d_model * (cfg.position == "learned")
  attn_flops = 4 * cfg.n_layers * t * t * cfg.n_heads * cfg.head_dim * b
  flops = 2 * (cfg.num_params() - lookups) * b * t + attn_flops
  keys = decoding.row_keys(0, range(b))
  eos = jnp.array([-1], jnp.int32)  # never stops early: a fixed amount of work
  gen = lambda: decoding.generate(cfg, params, ids[:, :32], mask[:, :32], keys, eos, 0,  # noqa
                                  max_new_tokens=_NEW.value)
  gen_s = best_time(gen, max(1, _REPEATS.value // 2))
  result = {
      "model": _MODEL.value, "dtype": _DTYPE.value, "batch": b, "seq": t,
      "device": jax.devices()[0].device_kind, "matmul_peak_gflops": peak / 1e9,
      "forward_s": fwd_s, "forward_tokens_per_s": b * t / fwd_s,
      "forward_gflops": flops / fwd_s / 1e9, "forward_mfu": flops / fwd_s / peak,
      "decode_new_tokens_per_s": b * _NEW.value / gen_s,
  }
  rows = [{"metric": k, "value": v} for k, v in result.items()]
  print(write_table(_OUT.value, rows, ["metric", "value"], run_meta(repeats=_REPEATS.value)))


if __name__ == "__main__":
  app.run(main)
