"""Optax optimizer and learning-rate schedule from the ``optim`` section of a run config.

Keys of ``config.optim`` (see ``zoo.training.config.base_config``): ``name`` (adamw | adam |
sgd), ``lr`` (peak), ``schedule`` (cosine | linear | inverse_sqrt | constant),
``warmup_steps``, ``end_lr_ratio`` (final lr / peak for cosine and linear), ``b1``, ``b2``,
``eps``, ``weight_decay``, ``clip_norm`` (0 = off), ``momentum`` (sgd).

Gradient accumulation is not an optimizer wrapper here: ``train.grad_accum_steps`` splits
each global batch into micro-batches inside one train step (``zoo.training.loop``), so a step
is still one update and the schedule counts updates.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear", "inverse_sqrt", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")

# Parameters named like this get weight decay; biases, norm scales, embedding tables,
# class tokens and position tables do not (as in BERT, GPT-2 and most later recipes).
DECAYED_NAMES = ("kernel",)


def make_schedule(
    lr: float,
    schedule: str,
    num_steps: int,
    warmup_steps: int = 0,
    end_lr_ratio: float = 0.0,
) -> optax.Schedule:
  """A schedule ``count -> lr`` where ``count`` is the number of updates already applied.

  Warm-up is linear from ``lr / warmup_steps`` (the first update is not wasted at lr 0) up to
  ``lr`` at update ``warmup_steps``. Then:

  * ``cosine``: half a cosine from ``lr`` to ``end_lr_ratio * lr`` at ``num_steps``;
  * ``linear``: a straight line to ``end_lr_ratio * lr`` (BERT);
  * ``inverse_sqrt``: ``lr * sqrt(warmup_steps / step)`` — Vaswani et al. 2017, eq. 3, whose
    peak ``d_model**-0.5 * warmup_steps**-0.5`` is the ``lr`` to pass;
  * ``constant``: ``lr``.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule must be one of {SCHEDULES}; got {schedule!r}.")
  if warmup_steps < 0 or num_steps <= 0:
    raise ValueError(f"need num_steps > 0 and warmup_steps >= 0; got {num_steps}, {warmup_steps}.")
  if schedule == "inverse_sqrt" and warmup_steps == 0:
    raise ValueError("the inverse_sqrt schedule needs optim.warmup_steps > 0 (its peak step).")
  warmup = max(int(warmup_steps), 0)
  decay_steps = max(num_steps - warmup, 1)

  def fn(count):
    step = jnp.asarray(count, jnp.float32) + 1.0  # the 1-based number of this update
    ramp = jnp.minimum(step / max(warmup, 1), 1.0) if warmup else 1.0
    after = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if schedule == "cosine":
      shape = end_lr_ratio + (1 - end_lr_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * after))
    elif schedule == "linear":
      shape = 1.0 - (1.0 - end_lr_ratio) * after
    elif schedule == "inverse_sqrt":
      shape = jnp.sqrt(warmup / jnp.maximum(step, warmup))
    else:
      shape = 1.0
    return lr * ramp * shape

  return fn


def decay_mask(params: Any) -> Any:
  """``True`` for the parameters that get weight decay (see :data:`DECAYED_NAMES`)."""

  def decayed(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return name in DECAYED_NAMES

  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(
    optim: Any, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``(tx, schedule)`` from ``config.optim``; gradient clipping comes first in the chain."""
  if optim.name not in OPTIMIZERS:
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}; got {optim.name!r}.")
  # lr 0 is allowed (a run that only evaluates, or checks a checkpoint loads bit for bit).
  for key, ok, rule in (("lr", optim.lr >= 0, ">= 0"), ("eps", optim.eps > 0, "> 0"),
                        ("weight_decay", optim.weight_decay >= 0, ">= 0"),
                        ("clip_norm", optim.clip_norm >= 0, ">= 0 (0 = off)")):
    if not ok:
      raise ValueError(f"optim.{key}={optim[key]!r} must be {rule}; fix the value.")
  schedule = make_schedule(
      optim.lr, optim.schedule, num_steps, optim.warmup_steps, optim.end_lr_ratio
  )
  parts = []
  if optim.clip_norm:
    parts.append(optax.clip_by_global_norm(optim.clip_norm))
  if optim.name == "adamw":
    parts.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=decay_mask,
        )
    )
  else:
    if optim.weight_decay:
      if optim.name == "adam":
        raise ValueError(
            f"optim.name='adam' with optim.weight_decay={optim.weight_decay}: use "
            "optim.name='adamw' (decoupled decay) or set optim.weight_decay=0."
        )
      parts.append(optax.add_decayed_weights(optim.weight_decay, mask=decay_mask))
    if optim.name == "adam":
      parts.append(optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps))
    else:
      parts.append(optax.sgd(schedule, momentum=optim.momentum or None))
  return optax.chain(*parts), schedule
