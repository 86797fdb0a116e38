"""The prompt decision transformer: loss by hand, learning, sharded equality, resume, sampling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qpo_jax import sharding
from qpo_jax.models.config import preset
from qpo_jax.configs import base
from qpo_jax.policy import sampling, train_step, trainer, training_rows
from qpo_jax.policy.settings import TrainSettings
from qpo_jax.policy.model import PromptDT, init_policy
from qpo_jax.store.records import Record
from qpo_jax.testing import policy_batch

CFG = preset("tiny-llama")
TC = dataclasses.replace(
    TrainSettings.of(base.get_config().train), learning_rate=3e-3, schedule="step",
    decay_every_epochs=1000, decay_rate=0.65, grad_clip=1.0, weight_decay=1e-4, epochs=2,
    batch_size=8, query_len=10, prompt_len=8, log_every=1, checkpoint_every=1000, pad_multiple=0)


@pytest.mark.integration
def test_loss_by_hand_and_padding_independence():
  params = init_policy(CFG, jax.random.key(0))
  batch = policy_batch(8, 6, 5)
  model = PromptDT(CFG)
  logits, r_hat = model.apply({"params": params}, *[batch[k] for k in train_step.BATCH_KEYS])
  # hand: per row, run only its real tokens (no padding anywhere) through the same modules
  ce_sum, n = 0.0, 0
  for i in range(8):
    q = batch["query"][i][batch["query_mask"][i]]
    p = batch["prompt"][i][batch["prompt_mask"][i]]
    one = {"returns": batch["returns"][i:i + 1], "query": q[None], "query_mask": np.ones((1, len(q)),
           bool), "prompt": p[None], "prompt_mask": np.ones((1, len(p)), bool)}
    lg, rh = model.apply({"params": params}, *[one[k] for k in train_step.BATCH_KEYS])
    np.testing.assert_allclose(lg[0], logits[i, :len(p)], atol=1e-4)
    assert float(rh[0]) == pytest.approx(float(r_hat[i]), abs=1e-5)
    logp = jax.nn.log_softmax(np.asarray(lg[0], np.float64), -1)
    ce_sum -= sum(float(logp[t, tok]) for t, tok in enumerate(p))
    n += len(p)
  ce = ce_sum / n
  mse = float(np.mean((np.asarray(r_hat) - batch["returns"]) ** 2))
  lam = 0.5 if mse < 10 else 0.1
  m = train_step.eval_loss(CFG, params, batch)
  assert float(m["ce"]) == pytest.approx(ce, rel=1e-4)
  assert float(m["mse"]) == pytest.approx(mse, rel=1e-4)
  assert float(m["lambda"]) == pytest.approx(lam)
  assert float(m["loss"]) == pytest.approx(ce + lam * mse / 100 ** 2, rel=1e-4)
  # lambda = 0.5 while MSE < 10, 0.1 above; with a zeroed return head R_hat = 0, MSE = mean(R^2)
  zero_head = dict(params, return_head={k: jnp.zeros_like(v)
                                        for k, v in params["return_head"].items()})
  for scale, lam in ((0.01, 0.5), (1.0, 0.1)):
    returns = batch["returns"] * scale
    m = train_step.eval_loss(CFG, zero_head, dict(batch, returns=returns))
    assert float(m["mse"]) == pytest.approx(float(np.mean(returns ** 2)), rel=1e-5)
    assert float(m["lambda"]) == pytest.approx(lam)


def _state_and_update(mesh, params, tc=None):
  tc = dataclasses.replace(TC, **(tc or {}))
  step = train_step.make_train_step(CFG, tc, 10, params, mesh)
  return step.init(params), step.update


def _losses(mesh, steps=8):
  params = init_policy(CFG, jax.random.key(1))
  state, update = _state_and_update(mesh, params)
  out = []
  for i in range(steps):
    batch = sharding.shard_batch(policy_batch(8, 6, 5, seed=i % 3), mesh)
    state, m = update(state, batch, jax.random.key(0))
    out.append({k: float(v) for k, v in m.items()})
  return out, state


@pytest.mark.integration
def test_gradients_finite_and_return_head_learns():
  losses, _ = _losses(sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}), steps=40)
  assert all(np.isfinite(m["grad_norm"]) for m in losses)
  assert losses[-1]["mse"] < 0.2 * losses[0]["mse"] and losses[-1]["ce"] < losses[0]["ce"]


@pytest.mark.integration
def test_eight_device_mesh_matches_one_device():
  one, s1 = _losses(sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}))
  eight, s8 = _losses(sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  for a, b in zip(one, eight):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
  emb = s8.params["backbone"]["embed"]["embedding"]
  assert len(emb.sharding.device_set) == 8


def _store():
  """Four queries, each with its own best prompt (return 100) and a worse one (return 50)."""
  recs = []
  for i, (good, bad) in enumerate([("alpha beta", "zeta"), ("gamma", "eta theta"),
                                   ("delta one", "iota"), ("epsilon", "kappa two")]):
    q = f"query number {i} about topic {'abcd'[i]}"
    recs += [Record(task="t", query=q, prompt=good, reward=100.0),
             Record(task="t", query=q, prompt=bad, reward=50.0)]
  return recs


def _return_embeddings(params, cfg, returns):
  return np.asarray(PromptDT(cfg).apply({"params": params}, jnp.asarray(returns, jnp.float32),
                                        method=PromptDT.embed_return))[:, 0]


@pytest.mark.integration
@pytest.mark.parametrize("pretrained", [False, True])
def test_return_is_visible_at_init(pretrained):
  """R = 50 and R = 100 must give clearly different inputs before any training (the spec's
  LN(Linear(R) + seg) gave an RMS difference of about 0.002 between R = 80 and R = 100)."""
  backbone = init_policy(CFG, jax.random.key(5))["backbone"] if pretrained else None
  params = init_policy(CFG, jax.random.key(6), backbone_params=backbone)
  e = _return_embeddings(params, CFG, [0.0, 50.0, 80.0, 100.0])
  tokens = np.asarray(PromptDT(CFG).apply({"params": params}, jnp.arange(3, 40)[None],
                                          1, method=PromptDT.embed_text))[0]
  token_rms = np.sqrt(np.mean(tokens ** 2))
  rms = lambda x: float(np.sqrt(np.mean(x ** 2)))  # noqa: E731
  assert rms(e[1] - e[3]) > 0.3 * token_rms  # R = 50 vs 100
  assert rms(e[2] - e[3]) > 0.1 * token_rms  # R = 80 vs 100
  assert rms(e[0] - e[3]) > 2 * rms(e[1] - e[3]) * 0.9  # linear in R: twice as far
  if pretrained:  # the input norm and R start at the backbone's embedding scale
    emb = np.asarray(backbone["embed"]["embedding"])
    assert token_rms == pytest.approx(np.sqrt(np.mean(emb ** 2)), rel=0.1)


@pytest.mark.integration
def test_overfit_is_query_dependent_and_reward_conditioned(tmp_path, smollm2_tokenizer):
  """The prompt depends on the query and on R: R* = 100 and R* = 50 give different prompts."""
  cfg = CFG.replace(vocab_size=len(smollm2_tokenizer))
  params = init_policy(cfg, jax.random.key(3))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  tc = dataclasses.replace(TC, epochs=150, learning_rate=3e-3)
  rows = training_rows.from_records(_store(), smollm2_tokenizer, query_len=tc.query_len,
                                    prompt_len=tc.prompt_len)
  params = trainer.train_round(str(tmp_path), cfg, params, rows, tc, mesh=mesh, seed=0)
  queries = [r.query for r in _store()[::2]]
  high = sampling.decode_prompts(cfg, params, smollm2_tokenizer, queries, target_return=100.0,
                                 query_len=10, prompt_len=8, seed=0)
  low = sampling.decode_prompts(cfg, params, smollm2_tokenizer, queries, target_return=50.0,
                                query_len=10, prompt_len=8, seed=0)
  assert [h[0] for h in high] == [r.prompt for r in _store()[::2]]
  assert [x[0] for x in low] == [r.prompt for r in _store()[1::2]]
  history = trainer.metrics_history(str(tmp_path))
  assert history[-1]["token_accuracy"] == 1.0 and (tmp_path / "final").exists()
  assert any(p.name.startswith("events") for p in (tmp_path / "tb").iterdir())


@pytest.mark.integration
def test_kill_and_resume_equals_uninterrupted(tmp_path, smollm2_tokenizer):
  cfg = CFG.replace(vocab_size=len(smollm2_tokenizer))
  params = init_policy(cfg, jax.random.key(4))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  tc = dataclasses.replace(TC, epochs=5, batch_size=2)  # 4 steps per epoch, 20 steps
  rows = training_rows.from_records(_store(), smollm2_tokenizer, query_len=tc.query_len,
                                    prompt_len=tc.prompt_len)
  copy = lambda: jax.tree.map(jnp.copy, params)  # noqa: E731  (training consumes its input)
  ref = trainer.train_round(str(tmp_path / "a"), cfg, copy(), rows, tc,
                            mesh=mesh, seed=1)
  part = trainer.train_round(str(tmp_path / "b"), cfg, copy(), rows, tc,
                             mesh=mesh, seed=1, stop_after=7)  # killed after step 7 (mid-epoch)
  assert not (tmp_path / "b" / "final").exists()
  got = trainer.train_round(str(tmp_path / "b"), cfg, params, rows, tc,
                            mesh=mesh, seed=1)
  del part
  for x, y in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
  steps = [m["step"] for m in trainer.metrics_history(str(tmp_path / "b"))]
  assert steps == list(range(1, 21))  # no step logged twice after the resume


def _flip(path, count=16):
  data = bytearray(path.read_bytes())
  for i in range(count):
    data[len(data) // 2 + i] ^= 0xFF
  path.write_bytes(bytes(data))


def _largest_file(directory):
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.integration
def test_damaged_checkpoints_are_never_resumed(tmp_path, smollm2_tokenizer, caplog):
  """A flipped byte in the latest step's arrays, or its truncated _METADATA: the step is
  moved aside with a warning naming it and the step resumed instead, and the round ends
  as an uninterrupted one; both steps damaged: the round starts over. Damaged final
  parameters stop whoever loads them, naming the path."""
  cfg = CFG.replace(vocab_size=len(smollm2_tokenizer))
  params = init_policy(cfg, jax.random.key(4))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  tc = dataclasses.replace(TC, epochs=5, batch_size=2, checkpoint_every=4)  # 20 steps
  rows = training_rows.from_records(_store(), smollm2_tokenizer, query_len=tc.query_len,
                                    prompt_len=tc.prompt_len)
  copy = lambda: jax.tree.map(jnp.copy, params)  # noqa: E731  (training consumes its input)
  ref = trainer.train_round(str(tmp_path / "ref"), cfg, copy(), rows, tc, mesh=mesh, seed=1)

  def killed_at_10(name):
    trainer.train_round(str(tmp_path / name), cfg, copy(), rows, tc, mesh=mesh, seed=1,
                        stop_after=10)
    steps = tmp_path / name / "checkpoints"
    assert sorted(int(p.name) for p in steps.iterdir() if p.name.isdigit()) == [8, 10]
    return steps

  def resumed(name):
    caplog.clear()
    got = trainer.train_round(str(tmp_path / name), cfg, copy(), rows, tc, mesh=mesh, seed=1)
    for x, y in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    assert [m["step"] for m in trainer.metrics_history(str(tmp_path / name))] == \
        list(range(1, 21))
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

  steps = killed_at_10("flipped")
  _flip(_largest_file(steps / "10"))
  warnings = resumed("flipped")
  assert len(warnings) == 1 and f"checkpoint {steps / '10'} is damaged" in warnings[0]
  assert "differs from its sha256 at save time" in warnings[0]
  assert f"resuming from step 8 ({steps / '8'})" in warnings[0]
  assert len(list((tmp_path / "flipped" / "damaged").iterdir())) == 2  # the step, its sums

  def truncate(path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])

  steps = killed_at_10("metadata")
  truncate(steps / "10" / "state" / "_METADATA")
  assert "state/_METADATA differs from its sha256" in resumed("metadata")[0]
  steps = killed_at_10("no_sums")  # as saved before checksums existed: orbax's own error
  truncate(steps / "10" / "state" / "_METADATA")
  for sums in (tmp_path / "no_sums" / "checkpoint_sums").iterdir():
    sums.unlink()
  assert "orbax cannot read it" in resumed("no_sums")[0]

  steps = killed_at_10("both")
  _flip(_largest_file(steps / "10"))
  _flip(_largest_file(steps / "8"))
  warnings = resumed("both")
  assert len(warnings) == 2 and "the round starts over" in warnings[1]

  final = tmp_path / "both" / "params"
  _flip(_largest_file(final))
  with pytest.raises(ValueError, match=f"the parameters of {tmp_path / 'both'} are damaged: "
                     f"{final}/.* differs from its sha256 at save time; delete "):
    trainer.train_round(str(tmp_path / "both"), cfg, copy(), rows, tc, mesh=mesh, seed=1)


@pytest.mark.integration
def test_a_non_finite_loss_stops_the_round_unfinished(tmp_path, smollm2_tokenizer):
  cfg = CFG.replace(vocab_size=len(smollm2_tokenizer))
  params = init_policy(cfg, jax.random.key(4))
  params["return_head"] = jax.tree.map(lambda x: x * jnp.nan, params["return_head"])
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  rows = training_rows.from_records(_store(), smollm2_tokenizer, query_len=TC.query_len,
                                    prompt_len=TC.prompt_len)
  with pytest.raises(FloatingPointError, match=r"the loss is nan at step 1 of 2; the round "
                     r"stops unfinished \(last checkpoint: step none\)"):
    trainer.train_round(str(tmp_path), cfg, params, rows, TC, mesh=mesh, seed=1)
  assert not (tmp_path / "final").exists() and not (tmp_path / "params").exists()


@pytest.mark.integration
def test_cached_sampling_equals_recomputation_and_padding():
  params = init_policy(CFG, jax.random.key(5))
  model = PromptDT(CFG)
  b = policy_batch(8, 6, 5, seed=2)
  keys = jax.random.split(jax.random.key(0), 8)
  out, lengths = sampling.sample(CFG, params, jnp.asarray(b["returns"]), b["query"],
                                 b["query_mask"], keys, jnp.asarray([2]), 0, max_len=6)
  out = np.asarray(out)
  for i in range(8):  # greedy by full recomputation, row alone, no padding
    q = b["query"][i][b["query_mask"][i]][None]
    toks = []
    for _ in range(int(lengths[i])):
      p = np.array([toks + [0]], np.int32)
      lg, _ = model.apply({"params": params}, b["returns"][i:i + 1], q, np.ones_like(q, bool), p,
                          np.ones_like(p, bool))
      toks.append(int(np.argmax(lg[0, len(toks)])))
    assert out[i, :lengths[i]].tolist() == toks
  # more query padding (wider bucket) gives the same prompts, sampled too
  wide_q = np.concatenate([b["query"], np.zeros((8, 5), np.int32)], 1)
  wide_m = np.concatenate([b["query_mask"], np.zeros((8, 5), bool)], 1)
  for temp in (0.0, 1.0):
    a = sampling.sample(CFG, params, jnp.asarray(b["returns"]), b["query"], b["query_mask"], keys,
                        jnp.asarray([2]), 0, max_len=6, temperature=temp, top_k=5)
    c = sampling.sample(CFG, params, jnp.asarray(b["returns"]), wide_q, wide_m, keys,
                        jnp.asarray([2]), 0, max_len=6, temperature=temp, top_k=5)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(c[0]))


@pytest.mark.integration
@pytest.mark.parametrize("name", ["gpt2-small", "llama-2-7b"])
def test_real_size_train_step_eval_shape(name):
  cfg = preset(name, dtype="bfloat16")
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  params = jax.eval_shape(lambda: init_policy(cfg, jax.random.key(0)))
  tc = dataclasses.replace(TC, batch_size=8, query_len=40, prompt_len=40)
  step = train_step.make_train_step(cfg, tc, 100, params, mesh)
  batch = {"returns": jax.ShapeDtypeStruct((8,), jnp.float32),
           "query": jax.ShapeDtypeStruct((8, 40), jnp.int32),
           "query_mask": jax.ShapeDtypeStruct((8, 40), bool),
           "prompt": jax.ShapeDtypeStruct((8, 40), jnp.int32),
           "prompt_mask": jax.ShapeDtypeStruct((8, 40), bool)}
  new_state, metrics = jax.eval_shape(step.update, step.shapes, batch, jax.random.key(0))
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(step.shapes)
  assert metrics["loss"].shape == ()


@pytest.mark.integration
def test_frozen_backbone_and_grad_accumulation():
  params = init_policy(CFG, jax.random.key(6))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  state, update = _state_and_update(mesh, params, {"freeze_backbone": True})
  before = jax.tree_util.tree_map(np.asarray, state.params)
  for i in range(3):
    state, _ = update(state, policy_batch(8, 6, 5, seed=i), jax.random.key(0))
  same = jax.tree_util.tree_map(lambda a, b: np.array_equal(a, np.asarray(b)),
                                before["backbone"], state.params["backbone"])
  assert all(jax.tree_util.tree_leaves(same))
  assert not np.array_equal(before["prompt_proj"]["kernel"], state.params["prompt_proj"]["kernel"])
  state, update = _state_and_update(mesh, init_policy(CFG, jax.random.key(6)), {"grad_accum": 2})
  first = np.asarray(state.params["return_head"]["kernel"])
  state, _ = update(state, policy_batch(8, 6, 5, seed=0), jax.random.key(0))
  assert np.array_equal(first, np.asarray(state.params["return_head"]["kernel"]))  # accumulating
  state, _ = update(state, policy_batch(8, 6, 5, seed=1), jax.random.key(0))
  assert not np.array_equal(first, np.asarray(state.params["return_head"]["kernel"]))


@pytest.mark.real_model
def test_policy_from_the_embedded_smollm2(smollm2):
  from qpo_jax.policy.model import pretrained_policy

  cfg, params, tok = pretrained_policy({"name": "smollm2-135m-instruct"}, jax.random.key(0))
  assert params["backbone"] is not None and cfg.d_model == 576
  for a, b in zip(jax.tree_util.tree_leaves(params["backbone"]),
                  jax.tree_util.tree_leaves(smollm2.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  out = sampling.decode_prompts(cfg, params, tok, ["I love this sunny day!"], target_return=100.0,
                                query_len=40, prompt_len=8, seed=0)
  assert len(out) == 1 and isinstance(out[0][0], str)


@pytest.mark.integration
def test_lora_starts_unchanged_and_trains_only_adapters(smollm2_tokenizer):
  from qpo_jax.checkpoints.registry import load_model

  lm = load_model({"name": "random", "preset": "tiny-llama", "seed": 7})
  base = init_policy(CFG, jax.random.key(8), backbone_params=lm.params)
  lcfg = CFG.replace(lora_rank=4)
  lora = init_policy(lcfg, jax.random.key(8), backbone_params=lm.params)
  assert lora["backbone"]["layers"]["attn"]["q_lora"]["a"].shape == (CFG.n_layers, 64, 4)
  batch = policy_batch(8, 6, 5)
  m0, m1 = train_step.eval_loss(CFG, base, batch), train_step.eval_loss(lcfg, lora, batch)
  assert float(m0["ce"]) == pytest.approx(float(m1["ce"]), rel=1e-6)  # B = 0 at the start
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  step = train_step.make_train_step(lcfg, TC, 10, lora, mesh)
  state, update = step.init(lora), step.update
  before = jax.tree_util.tree_map(np.asarray, state.params)
  for i in range(3):
    state, _ = update(state, policy_batch(8, 6, 5, seed=i), jax.random.key(0))
  attn0, attn1 = before["backbone"]["layers"]["attn"], state.params["backbone"]["layers"]["attn"]
  np.testing.assert_array_equal(attn0["q"]["kernel"], np.asarray(attn1["q"]["kernel"]))
  assert not np.array_equal(attn0["q_lora"]["b"], np.asarray(attn1["q_lora"]["b"]))
  with pytest.raises(ValueError, match="shape"):
    init_policy(CFG.replace(d_model=32, head_dim=8), jax.random.key(0), backbone_params=lm.params)
