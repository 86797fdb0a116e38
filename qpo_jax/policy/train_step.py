"""Offline RL objective and the pure, jitted, sharded train step.

L = CE(prompt tokens | R, q) + lambda * MSE(R_hat, R), lambda = 0.5 if MSE < 10
else 0.1 (spec); no KL or ranking term. lambda is chosen on the MSE in return
units (0..100), as the spec states it; the term added to the loss is the same
MSE on the model's 0..1 scale (R / RETURN_SCALE). On the 0..100 scale an
untrained head's MSE is in the thousands: its gradient would swamp the prompt
loss in the shared backbone and, after global-norm clipping, shrink the
prompt loss's gradients toward Adam's epsilon. `make_update` returns
`update(state, batch, rng) -> (state, metrics)`: the rng is folded with the
step, the state is donated, and parameters, optimizer state and batch carry
explicit shardings from the mesh's rules.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from qpo_jax import sharding
from qpo_jax.models.config import ModelConfig
from qpo_jax.policy.model import RETURN_SCALE, PromptDT
from qpo_jax.policy.settings import TrainSettings

BATCH_KEYS = ("returns", "query", "query_mask", "prompt", "prompt_mask")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def lr_schedule(tc: TrainSettings, steps_per_epoch: int) -> optax.Schedule:
  """The spec's step decay (x`decay_rate` every `decay_every_epochs`) or cosine, by config."""
  lr = tc.learning_rate
  if tc.schedule == "step":
    return optax.exponential_decay(lr, max(1, int(tc.decay_every_epochs * steps_per_epoch)),
                                   tc.decay_rate, staircase=True)
  total = max(1, int(tc.epochs * steps_per_epoch))  # cosine
  warmup = min(tc.warmup_steps, total - 1)
  return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, total)


def make_optimizer(tc: TrainSettings, steps_per_epoch: int, params: Any
                   ) -> optax.GradientTransformation:
  """AdamW with weight decay after global-norm clipping; frozen backbone (or LoRA), accumulation."""
  schedule = lr_schedule(tc, steps_per_epoch)
  tx = optax.chain(optax.clip_by_global_norm(tc.grad_clip),
                   optax.adamw(schedule, weight_decay=tc.weight_decay))
  if tc.freeze_backbone or _has_lora(params):
    # the backbone's pretrained weights stay fixed; heads and LoRA adapters train
    labels = jax.tree_util.tree_map(lambda t: "train" if t else "frozen",
                                    _trainable(params, tc.freeze_backbone))
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  if tc.grad_accum > 1:
    tx = optax.MultiSteps(tx, tc.grad_accum)
  return tx


def _trainable(params: Any, freeze_backbone: bool) -> Any:
  """A tree of bools: which parameters a round trains (with a frozen backbone or LoRA
  adapters, the heads and adapters only)."""
  frozen = freeze_backbone or _has_lora(params)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not (frozen and sharding.path_str(path).startswith("backbone/") and
                           "_lora/" not in sharding.path_str(path)), params)


def trained_parameters(params: Any, freeze_backbone: bool) -> int:
  """How many parameters a round trains (the report sets baselines' capacity beside it)."""
  return int(sum(x.size for x, t in zip(jax.tree_util.tree_leaves(params),
                                        jax.tree_util.tree_leaves(_trainable(params,
                                                                             freeze_backbone)))
                 if t))


def _has_lora(params: Any) -> bool:
  return any("_lora/" in sharding.path_str(p)
             for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])


def prompt_ce(logits: jax.Array, prompt: jax.Array, prompt_mask: jax.Array) -> jax.Array:
  """Mean cross-entropy of the real prompt tokens under [B, Lp, V] logits (float32 softmax)."""
  mask = prompt_mask.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_lp = jnp.take_along_axis(logp, prompt[..., None], axis=-1)[..., 0]
  return -(token_lp * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def loss_fn(params, model: PromptDT, batch: Mapping[str, jax.Array], rng: jax.Array,
            deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
  logits, r_hat = model.apply({"params": params}, batch["returns"], batch["query"],
                              batch["query_mask"], batch["prompt"], batch["prompt_mask"],
                              deterministic=deterministic, rngs={"dropout": rng})
  ce = prompt_ce(logits, batch["prompt"], batch["prompt_mask"])
  mask = batch["prompt_mask"].astype(jnp.float32)
  n = jnp.maximum(mask.sum(), 1.0)
  mse = jnp.mean(jnp.square(r_hat - batch["returns"].astype(jnp.float32)))
  lam = jnp.where(jax.lax.stop_gradient(mse) < 10.0, 0.5, 0.1)
  accuracy = ((jnp.argmax(logits, -1) == batch["prompt"]) * mask).sum() / n
  loss = ce + lam * mse / RETURN_SCALE ** 2
  return loss, {"loss": loss, "ce": ce, "mse": mse, "lambda": lam, "token_accuracy": accuracy}


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_shardings(state_shapes: TrainState, mesh) -> TrainState:
  """Shardings of a TrainState: optimizer moments follow their parameters' rules."""
  def spec(path, x):
    name = sharding.path_str(path)
    if not getattr(x, "shape", ()):
      return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.sharding.NamedSharding(mesh, sharding.spec_for(name, x.shape, mesh))
  return jax.tree_util.tree_map_with_path(spec, state_shapes)


def make_update(cfg: ModelConfig, tx: optax.GradientTransformation, schedule: optax.Schedule,
                mesh, state_sharding: TrainState) -> Callable:
  """The jitted `update(state, batch, rng) -> (state, metrics)` for this mesh."""
  model = PromptDT(cfg)
  deterministic = cfg.dropout == 0.0

  def update(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model, batch=batch, rng=rng,
                                                   deterministic=deterministic), has_aux=True)
    (_, metrics), grads = grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   learning_rate=jnp.asarray(schedule(state.step), jnp.float32))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  batch_sharding = {k: sharding.batch_sharding(mesh, 2 if k != "returns" else 1)
                    for k in BATCH_KEYS}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(update, in_shardings=(state_sharding, batch_sharding, replicated),
                 out_shardings=(state_sharding, replicated), donate_argnums=(0,))


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """What a training loop needs for one config, parameter tree and mesh."""

  update: Callable  # (state, batch, rng) -> (state, metrics), jitted
  init: Callable  # params -> TrainState placed by `shardings`; consumes (donates) the params
  shapes: TrainState
  shardings: TrainState


def make_train_step(cfg: ModelConfig, tc: TrainSettings, steps_per_epoch: int, params: Any,
                    mesh) -> TrainStep:
  """Optimizer, state shapes and shardings, and the jitted update, built once.

  `init` takes over the parameters' buffers (donated), so training does not hold a
  second copy of the model beside its state; pass a copy to keep the originals.
  """
  tx = make_optimizer(tc, steps_per_epoch, params)
  shapes = jax.eval_shape(lambda p: init_state(p, tx), params)
  shardings = state_shardings(shapes, mesh)
  jitted_init = jax.jit(lambda p: init_state(p, tx), out_shardings=shardings, donate_argnums=(0,))

  def init(p):  # placed first, so every buffer can be donated
    return jitted_init(jax.device_put(p, shardings.params, donate=True))

  return TrainStep(update=make_update(cfg, tx, lr_schedule(tc, steps_per_epoch), mesh, shardings),
                   init=init, shapes=shapes, shardings=shardings)


def eval_loss(cfg: ModelConfig, params, batch) -> dict[str, jax.Array]:
  """Loss parts without a gradient (held-out monitoring, tests)."""
  return loss_fn(params, PromptDT(cfg), batch, jax.random.key(0), True)[1]
