"""What a run compiles: the train and eval steps, and the cached program that jits them.

:func:`train_step` and :func:`eval_step` are pure module-level functions, jitted once per run
with explicit shardings; the state is donated. Step ``N`` uses the key ``fold_in(rng, N)``, so a
resumed run draws the same dropout masks as an uninterrupted one. :func:`program` builds the
model, schedule, state shapes and shardings and the jitted init / step / eval; ``train.py`` and
the benchmarks compile the same program, so the step they time is the one users run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, PartitionSpec

from zoo import registry
from zoo.data.batch import pad_batch
from zoo.tasks import Task, losses
from zoo.training import mesh as mesh_lib
from zoo.training import state as state_lib
from zoo.training import trainable as trainable_lib
from zoo.training.optimizer import make_optimizer
from zoo.training.state import TrainState


def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def _means(stats):
  return {k: s / jnp.maximum(c, 1e-12) for k, (s, c) in stats.items()}


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    task: Task,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a global batch.

  With ``grad_accum_steps = k`` the batch is split into ``k`` micro-batches whose gradients
  are summed before the update. Each loss term is normalised by its weight total over the
  *whole* batch, so the update equals the one on the full batch (up to float rounding).

  Returns:
    The new state and float32 scalars: ``loss``, the task's metrics, ``grad_norm`` (before
    clipping) and ``learning_rate``.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  totals = {t: jnp.sum(w) for t, w in task.loss_weights(batch).items()}

  def loss_fn(params, micro, micro_rng):
    outputs = task.apply(state.apply_fn, params, micro, rng=micro_rng, train=True)
    stats = task.stats(outputs, micro)
    loss = sum(stats[t][0] / jnp.maximum(totals[t], 1e-12) for t in task.loss_terms)
    return loss, stats

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (loss, stats), grads = grad_fn(state.params, batch, step_rng)
  else:
    k = grad_accum_steps

    def split(x):
      # Row i*k + j goes to micro-batch j: every micro-batch stays spread over all devices.
      x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
      return jax.lax.with_sharding_constraint(x, PartitionSpec(None, mesh_lib.BATCH_AXES))

    micro = jax.tree.map(split, batch)
    first = jax.tree.map(lambda x: x[0], micro)
    stats_shape = jax.eval_shape(lambda: loss_fn(state.params, first, step_rng)[1])
    zeros = (
        jax.tree.map(jnp.zeros_like, state.params),
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape),
    )

    def body(carry, xs):
      mb, i = xs
      (micro_loss, micro_stats), g = grad_fn(state.params, mb, jax.random.fold_in(step_rng, i))
      return (_tree_add(carry[0], g), _tree_add(carry[1], micro_stats)), micro_loss

    (grads, stats), losses = jax.lax.scan(body, zeros, (micro, jnp.arange(k)))
    loss = jnp.sum(losses)
  metrics = _means(stats)
  metrics["loss"] = loss
  metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
  metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
  return state.apply_gradients(grads), metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, task: Task):
  """``(stats, predictions)`` on one batch (no dropout).

  ``stats``: ``name -> (sum, count)`` of the task's statistics; ``predictions``: the arrays the
  task's host metrics read (predicted ids beside labels; None for tasks without any).
  """
  outputs = task.apply(state.apply_fn, state.params, batch, rng=None, train=False)
  return task.stats(outputs, batch), task.predictions(outputs, batch)


def evaluate(
    eval_fn: Callable, state: TrainState, dataset, mesh, *, rows: int, num_batches: int,
    task: Task | None = None, info: dict | None = None,
) -> dict[str, float]:
  """Padding-aware means of the task's statistics over (up to ``num_batches``) eval batches,
  and the task's host metrics (macro-F1, span F1, bits per byte) over the same batches."""
  total, collected = None, []
  for i, local in enumerate(dataset):
    if num_batches and i >= num_batches:
      break
    local = pad_batch(local, rows)
    stats, preds = eval_fn(state, mesh_lib.place_batch(local, mesh))
    total = stats if total is None else _tree_add(total, stats)
    if preds is not None:
      collected.append(jax.device_get(preds))  # replicated (out_shardings): on every host
  if total is None:
    return {}
  sums = jax.device_get(total)
  out = losses.means(sums)
  terms = [k for k in out if k.endswith("loss")]
  if "loss" not in out and terms:
    out["loss"] = sum(out[k] for k in terms)
  if task is not None and collected:
    joined = {k: np.concatenate([c[k] for c in collected]) for k in collected[0]}
    out.update(task.host_metrics(joined, sums, info or {}))
  return out


class Program(NamedTuple):
  """Everything a run compiles (see :func:`program`)."""

  model: nn.Module
  schedule: optax.Schedule
  abstract: TrainState  # shapes with shardings
  shardings: TrainState
  init: Callable  # rng -> sharded state, jitted afresh on each call (see :func:`_init_once`)
  step: Callable  # jitted train_step
  eval: Callable  # jitted eval_step


@functools.lru_cache(maxsize=8)
def program(
    model_cfg, task, optim: tuple, num_steps: int, accum: int, mesh, rules, xla: tuple = (),
    trainable: trainable_lib.Trainable | None = None,
) -> Program:
  """The model, schedule, state shapes/shardings and jitted init / train / eval of a run.

  Cached (all arguments are hashable: ``optim`` and ``xla`` are sorted item tuples of
  ``config.optim`` and ``config.train.compiler_options``, see :func:`program_for`), so repeated
  :func:`train` calls in one process compile once. ``step`` and ``eval`` have explicit in/out
  shardings (the state's and the batch's) and ``step`` donates the state. ``trainable`` freezes
  parameters and adds LoRA adapters (:mod:`zoo.training.trainable`).
  """
  model = registry.build(model_cfg)
  trainable = trainable or trainable_lib.Trainable()
  tx, schedule = make_optimizer(ml_collections.ConfigDict(dict(optim)), num_steps)
  tx = trainable_lib.wrap_optimizer(tx, trainable)
  init_args, init_kwargs = registry.family_of(model_cfg).dummy_inputs(model_cfg)
  abstract, shardings = state_lib.abstract_state(
      model, tx, init_args, init_kwargs, mesh, rules, trainable
  )
  batch_sh = mesh_lib.batch_sharding(mesh)
  rep = mesh_lib.replicated(mesh)
  step = jax.jit(
      functools.partial(train_step, task=task, schedule=schedule, grad_accum_steps=accum),
      in_shardings=(shardings, batch_sh, rep),
      out_shardings=(shardings, rep),
      donate_argnames=("state",),
      compiler_options=dict(xla) or None,
  )
  evaluate_fn = jax.jit(
      functools.partial(eval_step, task=task),
      in_shardings=(shardings, batch_sh),
      out_shardings=rep,
      compiler_options=dict(xla) or None,
  )
  init = _init_once(model, tx, init_args, init_kwargs, shardings, dict(xla) or None, trainable)
  return Program(model, schedule, abstract, shardings, init, step, evaluate_fn)


def _init_once(*make_init_args) -> Callable:
  """``rng -> state`` through a ``jax.jit`` made for that call and dropped after it.

  A run makes its state once; a jitted init cached with the program would keep its compiled
  executable (a random initialiser per parameter: ~0.1 GiB of host memory for a BERT- or
  ViT-base) alive for as long as the program, through every training step.
  """

  def init(rng):
    return state_lib.make_init(*make_init_args)(rng)

  return init


def program_for(
    model_cfg: Any,
    task: Task,
    optim: ml_collections.ConfigDict,
    *,
    num_steps: int,
    mesh: Mesh,
    rules,
    grad_accum_steps: int = 1,
    compiler_options: Mapping[str, Any] | None = None,
    trainable: trainable_lib.Trainable | None = None,
) -> Program:
  """:func:`program` from config sections: what :func:`build_run` and the benchmarks compile.

  Args:
    model_cfg: a frozen model config.
    task: the task whose loss the step minimises.
    optim: a ``config.optim`` section (keys of ``zoo.training.optimizer``).
    num_steps: updates the learning-rate schedule spans.
    mesh: the devices of the run.
    rules: logical -> mesh axis rules (``mesh.rules_from_config``).
    grad_accum_steps: micro-batches per update.
    compiler_options: XLA options for init, step and eval (``config.train.compiler_options``).
    trainable: frozen parameters and LoRA (``Trainable.from_config(config)``); None = all train.

  Returns:
    The cached :class:`Program` for these arguments.
  """
  optim_items = tuple(sorted(optim.to_dict().items()))
  xla = tuple(sorted(dict(compiler_options or {}).items()))
  return program(
      model_cfg, task, optim_items, int(num_steps), int(grad_accum_steps), mesh, rules, xla,
      trainable if trainable is not None and trainable.active else None,
  )


def init_state(prog: Program, mesh: Mesh, rules, rng: jax.Array) -> TrainState:
  """A fresh state from ``prog.init``, every array created in its own shards."""
  # The model's activation constraints name logical axes: tracing needs the mesh and rules.
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return prog.init(rng)
