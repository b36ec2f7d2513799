"""The Adam loop the gradient editors share (FT-L, LoRA, ROME's value search), and the loss on
chosen next-token log-probabilities."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def target_nll(
    logits: jax.Array, read_positions: jax.Array, labels: jax.Array, mask: jax.Array
) -> jax.Array:
  """Mean over the masked entries of -log p(labels[k]) read at logits[read_positions[k]].

  logits [T, V] of one row; read_positions, labels, mask: [K]."""
  logp = jax.nn.log_softmax(logits[read_positions], axis=-1)  # [K, V]
  picked = jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  mask = mask.astype(jnp.float32)
  return -jnp.sum(picked * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def adam_steps(
    loss_fn: Callable,
    init,
    *,
    lr: float,
    steps: int,
    stop_loss: float | None,
    project: Callable | None = None,
):
  """`steps` Adam steps (torch.optim.Adam's defaults: betas 0.9/0.999, eps 1e-8, no weight decay)
  on `loss_fn(variables)`. As the reference does, a step whose loss is below `stop_loss` is
  skipped (no update, the optimiser state kept), so once below it stays there. `project` maps the
  variables after each update (ROME's norm clamp). Returns (variables, losses [steps] before each
  step, final loss). Pure: `jax.vmap` batches it over edits."""
  opt = optax.adam(lr)

  def step(carry, _):
    variables, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, new_state = opt.update(grads, state, variables)
    new_vars = optax.apply_updates(variables, updates)
    if project is not None:
      new_vars = project(new_vars)
    go = jnp.asarray(True) if stop_loss is None else loss >= stop_loss
    keep = lambda new, old: jnp.where(go, new, old)
    return (
        jax.tree_util.tree_map(keep, new_vars, variables),
        jax.tree_util.tree_map(keep, new_state, state),
    ), loss

  (variables, _), losses = jax.lax.scan(step, (init, opt.init(init)), None, length=steps)
  return variables, losses, loss_fn(variables)
