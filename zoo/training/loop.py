"""The one training loop: every family and task, any mesh, exact resume.

:func:`train_step` and :func:`eval_step` are pure module-level functions, jitted once per run
with explicit shardings; the state is donated. Step ``N`` uses the key
``fold_in(rng, N)``, so a resumed run draws the same dropout masks as an uninterrupted one.
The metrics of step ``N`` are fetched after step ``N + 1`` has been dispatched, so the host
never stalls the device except at logging, evaluation and checkpoint steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import PartitionSpec

from zoo import registry
from zoo.training import checkpoint as ckpt_lib
from zoo.training import config as config_lib
from zoo.training import mesh as mesh_lib
from zoo.training import metrics as metrics_lib
from zoo.training import state as state_lib
from zoo.training import tasks as tasks_lib
from zoo.training.optimizer import make_optimizer
from zoo.training.state import TrainState

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The loss (or gradient norm) became NaN or inf; ``step`` is the step that produced it."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def _means(stats):
  return {k: s / jnp.maximum(c, 1e-12) for k, (s, c) in stats.items()}


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    task: tasks_lib.Task,
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


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, task: tasks_lib.Task):
  """``name -> (sum, count)`` of the task's statistics on one batch (no dropout)."""
  outputs = task.apply(state.apply_fn, state.params, batch, rng=None, train=False)
  return task.stats(outputs, batch)


@dataclasses.dataclass
class RunResult:
  """What :func:`train` returns (also written to the workdir)."""

  step: int  # the state's step at the end
  losses: dict[int, float]  # step -> training loss of every step run in this call
  eval: dict[str, float]  # last evaluation
  state: TrainState
  interrupted: str | None = None  # "SIGTERM" / "SIGINT" when stopped by a signal
  sample: str | None = None


class _StopSignals:
  """SIGTERM / SIGINT set a flag; the loop saves a checkpoint and returns."""

  def __init__(self):
    self.received: str | None = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, _frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, no save
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _default_dataset_fn():
  from zoo import data as data_lib  # noqa: PLC0415

  return data_lib.build_dataset


def _units(task, batch) -> int:
  return task.units({k: tuple(np.shape(v)) for k, v in batch.items()})


def _flops_per_step(model_cfg, batch, params) -> float:
  shapes = {k: tuple(np.shape(v)) for k, v in batch.items()}
  return registry.family_of(model_cfg).train_flops(model_cfg, params, shapes)["full"]


def _finite(x) -> bool:
  return bool(np.all(np.isfinite(np.asarray(x))))


def evaluate(
    eval_fn: Callable, state: TrainState, dataset, mesh, *, rows: int, num_batches: int
) -> dict[str, float]:
  """Padding-aware means of the task's statistics over (up to ``num_batches``) eval batches."""
  total = None
  for i, local in enumerate(dataset):
    if num_batches and i >= num_batches:
      break
    local = tasks_lib.pad_batch(local, rows)
    stats = eval_fn(state, mesh_lib.place_batch(local, mesh))
    total = stats if total is None else _tree_add(total, stats)
  if total is None:
    return {}
  out = tasks_lib.means(jax.device_get(total))
  terms = [k for k in out if k.endswith("loss")]
  if "loss" not in out and terms:
    out["loss"] = sum(out[k] for k in terms)
  return out


class Program(NamedTuple):
  """Everything a run compiles (see :func:`program`)."""

  model: nn.Module
  schedule: optax.Schedule
  abstract: TrainState  # shapes with shardings
  shardings: TrainState
  init: Callable  # jitted: rng -> sharded state
  step: Callable  # jitted train_step
  eval: Callable  # jitted eval_step


@functools.lru_cache(maxsize=8)
def program(
    model_cfg, task, optim: tuple, num_steps: int, accum: int, mesh, rules, xla: tuple = ()
) -> Program:
  """The model, schedule, state shapes/shardings and jitted init / train / eval of a run.

  Cached (all arguments are hashable: ``optim`` and ``xla`` are sorted item tuples of
  ``config.optim`` and ``config.train.compiler_options``), so repeated :func:`train` calls in
  one process compile once. ``step`` and ``eval`` have explicit in/out shardings (the state's
  and the batch's) and ``step`` donates the state.
  """
  model = registry.build(model_cfg)
  tx, schedule = make_optimizer(ml_collections.ConfigDict(dict(optim)), num_steps)
  init_args, init_kwargs = registry.family_of(model_cfg).dummy_inputs(model_cfg)
  abstract, shardings = state_lib.abstract_state(model, tx, init_args, init_kwargs, mesh, rules)
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
  init = state_lib.make_init(model, tx, init_args, init_kwargs, shardings, dict(xla) or None)
  return Program(model, schedule, abstract, shardings, init, step, evaluate_fn)


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: list[jax.Device] | None = None,
    stop_at: int | None = None,
    dataset_fn: Callable | None = None,
) -> RunResult:
  """Train (or resume) the run described by ``config`` in ``workdir``.

  Args:
    config: a run config (``configs/*.py``).
    workdir: checkpoints, logs and plots; an existing checkpoint there is resumed.
    devices: devices of the mesh (default all).
    stop_at: stop (and checkpoint) once the state reaches this step, as if interrupted;
      the schedule still spans ``train.num_steps``.
    dataset_fn: ``zoo.data.build_dataset`` or a stand-in with its signature.

  Returns:
    A :class:`RunResult`.

  Raises:
    NonFiniteLossError: the loss or gradient norm became NaN/inf; the last good checkpoint is
      kept.
    ValueError: bad config (indivisible batch, another model's checkpoint in ``workdir`` ...).
  """
  tc = config.train
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.rules_from_config(config)
  accum = int(tc.grad_accum_steps)
  mesh_lib.check_batch_size(tc.batch_size, mesh, accum)
  eval_rows_global = int(config.eval.batch_size or tc.batch_size)
  do_eval = int(config.eval.every) >= 0
  if do_eval:
    mesh_lib.check_batch_size(eval_rows_global, mesh)

  dataset_fn = dataset_fn or _default_dataset_fn()
  proc = {"process_index": jax.process_index(), "process_count": jax.process_count()}
  train_ds = dataset_fn(
      config.data, split="train", global_batch_size=tc.batch_size, seed=config.seed, **proc
  )
  eval_ds = None
  if do_eval:
    eval_ds = dataset_fn(
        config.data, split=config.eval.split, global_batch_size=eval_rows_global,
        seed=config.seed, **proc,
    )
  info = dict(train_ds.info)

  model_cfg = config_lib.model_config(config, info)
  family = registry.family_of(model_cfg).name
  task = tasks_lib.get_task(config.task, config.label_smoothing)
  optim = tuple(sorted(config.optim.to_dict().items()))
  xla = tuple(sorted(tc.compiler_options.to_dict().items()))
  prog = program(model_cfg, task, optim, int(tc.num_steps), accum, mesh, rules, xla)
  state_shapes = prog.abstract
  num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state_shapes.params)))

  ckpt = ckpt_lib.Checkpointer(
      workdir,
      every=tc.checkpoint_every,
      keep=tc.keep_checkpoints,
      fingerprint=config_lib.fingerprint(model_cfg, config.task),
      model_config=registry.config_to_json(model_cfg),
  )
  rng = jax.random.PRNGKey(config.seed)
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state_shapes)
    rng = ckpt_lib.rng_from_meta(meta)
    if meta.get("data") is not None:
      train_ds.set_state(meta["data"])
    log.info("resumed step %d from %s", int(state.step), ckpt.directory)
  else:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      state = prog.init(rng)
  start = int(jax.device_get(state.step))
  end = int(tc.num_steps) if stop_at is None else min(int(stop_at), int(tc.num_steps))
  step_fn, eval_fn = prog.step, prog.eval
  context = contextlib.ExitStack()
  context.enter_context(jax.set_mesh(mesh))
  context.enter_context(nn.logical_axis_rules(rules))
  stop = context.enter_context(_StopSignals())

  if jax.process_index() == 0:  # the run config next to its checkpoints (zoo.generate reads it)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = metrics_lib.MetricWriter(
      workdir,
      total_steps=end,
      start_step=start,
      unit=task.unit,
      progress_bar=tc.progress_bar,
  )
  writer.message(
      f"{config.model.name} ({family}, {num_params / 1e6:.2f}M params) task={config.task} "
      f"mesh={dict(mesh.shape)} steps {start}->{end} workdir={workdir}"
  )
  peak = metrics_lib.peak_flops(mesh.devices.flat[0])
  flops = None
  losses: dict[int, float] = {}
  window: dict[str, float] = {}
  window_n = 0
  last_eval: dict[str, float] = {}
  eval_rows = eval_rows_global // jax.process_count()

  def fetch(pending):
    nonlocal window_n
    step, metrics = pending
    m = jax.device_get(metrics)
    if not (_finite(m["loss"]) and _finite(m["grad_norm"])):
      good = ckpt.latest_step()
      ckpt.wait()
      kept = f"the last good checkpoint is step {good} in {ckpt.directory}" if good is not None else (
          "no checkpoint was saved before it")
      raise NonFiniteLossError(
          f"loss became {float(m['loss'])} (grad_norm {float(m['grad_norm'])}) at step {step}; "
          f"stopping. {kept}. Lower optim.lr, raise optim.warmup_steps, set optim.clip_norm, "
          "or check the data of that step.",
          step,
      )
    losses[step] = float(m["loss"])
    for k, v in m.items():
      window[k] = window.get(k, 0.0) + float(v)
    window_n += 1
    writer.progress(step, {"loss": float(m["loss"])})

  def run_eval(step):
    nonlocal last_eval
    last_eval = evaluate(
        eval_fn, state, eval_ds, mesh, rows=eval_rows, num_batches=int(config.eval.num_batches)
    )
    writer.write(step, "eval", last_eval)

  pending = None
  final = start
  data_iter = iter(train_ds)
  try:
    with context:
      for step in range(start, end):
        local = next(data_iter)
        state, metrics = step_fn(state, mesh_lib.place_batch(local, mesh), rng)
        done = step + 1
        if pending is not None:
          fetch(pending)  # step done - 1, now that step done is queued behind it
        pending = (done, metrics)
        if step == start:
          fetch(pending)  # the first step includes compilation: keep it out of throughput
          pending = None
          writer.reset_clock(done)
          if flops is None and peak:
            flops = _flops_per_step(model_cfg, local, state_shapes.params)
            flops *= jax.process_count()
            writer.flops_per_step, writer.peak = flops, peak * mesh.size
        else:
          writer.count(_units(task, local) * jax.process_count())
        final = done
        stopping = stop.received  # read once: a signal arriving later is seen next step
        evaluating = do_eval and config.eval.every > 0 and done % config.eval.every == 0
        saving = bool(done % ckpt.every == 0 or done == end or stopping)
        logging_now = done % tc.log_every == 0 or done == end
        if pending is not None and (evaluating or saving or logging_now):
          fetch(pending)  # a checkpoint is only written after its step's loss is known finite
          pending = None
        if logging_now and window_n:
          row = {k: v / window_n for k, v in window.items()}
          row.update(writer.throughput(done))
          writer.write(done, "train", row)
          window.clear()
          window_n = 0
        if evaluating:
          run_eval(done)
          writer.reset_clock(done)
        if saving:
          ckpt.save(done, state, rng=rng, data_state=train_ds.get_state(), force=True)
        if stopping:
          writer.message(
              f"{stopping}: saved step {done} in {ckpt.directory}; run the same command "
              "again to resume."
          )
          break
      if pending is not None:
        fetch(pending)
        pending = None
      evaluated = do_eval and config.eval.every > 0 and final % config.eval.every == 0
      if not stop.received and do_eval and not evaluated and final > start:
        run_eval(final)
  finally:
    ckpt.close()
    writer.close()

  sample = None
  if jax.process_index() == 0:
    if tc.plot:
      metrics_lib.plot_losses(workdir)
    if config.task == "lm" and config.sample.num_tokens > 0 and not stop.received:
      sample = sample_text(prog.model, state.params, info, config.sample, seed=config.seed)
      print(f"--- sample ---\n{sample}\n--------------", flush=True)
  return RunResult(
      step=final, losses=losses, eval=last_eval, state=state, interrupted=stop.received,
      sample=sample,
  )


def sample_text(model, params, info: dict, sample_cfg, seed: int = 0) -> str:
  """Continue ``sample_cfg.prompt`` with the trained LM (``zoo.generate``); returns the text."""
  from zoo.generate import generate  # noqa: PLC0415

  tokenizer = info.get("tokenizer")
  if tokenizer is None:
    raise ValueError("sampling needs the dataset's tokenizer (info['tokenizer']).")
  prompt = tokenizer.encode(sample_cfg.prompt) if sample_cfg.prompt else []
  if not prompt:
    prompt = [int(info.get("bos_id", info.get("eos_id", 0)) or 0)]
  cfg = model.config
  room = cfg.max_len - len(prompt) + 1 if cfg.position == "learned" else sample_cfg.num_tokens
  new = generate(
      model,
      jax.device_get(params),
      [prompt],
      max_new_tokens=max(1, min(int(sample_cfg.num_tokens), room)),
      eos_id=info.get("eos_id"),
      pad_id=int(info.get("pad_id", 0) or 0),
      do_sample=True,
      temperature=float(sample_cfg.temperature),
      top_k=int(sample_cfg.top_k),
      seed=seed,
  )
  return tokenizer.decode(list(prompt) + [int(t) for t in new[0]])
