"""The one training loop: every family and task, any mesh, exact resume.

:func:`train_step` and :func:`eval_step` are pure module-level functions, jitted once per run
with explicit shardings; the state is donated. Step ``N`` uses the key
``fold_in(rng, N)``, so a resumed run draws the same dropout masks as an uninterrupted one.
The metrics of step ``N`` are fetched after step ``N + 1`` has been dispatched, so the host
never stalls the device except at logging, evaluation and checkpoint steps.

A run is built, then run: :func:`build_run` makes the mesh, datasets, model config,
:class:`Program` (what is compiled, see :func:`program`), checkpointer and starting state;
:meth:`Run.run` is a short loop over steps with a list of :class:`Action` objects around it (log,
checkpoint, evaluate, stop on a signal), as in nanodo and big_vision. :func:`train` is both.
The benchmarks compile the same :func:`program` (``benchmarks/common.py``), so the step they
time and profile is the one ``train.py`` runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh, PartitionSpec

from zoo import registry
from zoo.layers.stack import scan_params
from zoo.models.common import count
from zoo.training import checkpoint as ckpt_lib
from zoo.training import config as config_lib
from zoo.training import eval_metrics
from zoo.training import mesh as mesh_lib
from zoo.training import metrics as metrics_lib
from zoo.training import state as state_lib
from zoo.training import tasks as tasks_lib
from zoo.training import trainable as trainable_lib
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
  """``(stats, predictions)`` on one batch (no dropout).

  ``stats``: ``name -> (sum, count)`` of the task's statistics; ``predictions``: the arrays the
  task's host metrics read (predicted ids beside labels; None for tasks without any).
  """
  outputs = task.apply(state.apply_fn, state.params, batch, rng=None, train=False)
  return task.stats(outputs, batch), task.predictions(outputs, batch)


@dataclasses.dataclass
class RunResult:
  """What :func:`train` / :meth:`Run.run` return (also written to the workdir)."""

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
    eval_fn: Callable, state: TrainState, dataset, mesh, *, rows: int, num_batches: int,
    task: tasks_lib.Task | None = None, info: dict | None = None,
) -> dict[str, float]:
  """Padding-aware means of the task's statistics over (up to ``num_batches``) eval batches,
  and the task's host metrics (macro-F1, span F1, bits per byte) over the same batches."""
  total, collected = None, []
  for i, local in enumerate(dataset):
    if num_batches and i >= num_batches:
      break
    local = tasks_lib.pad_batch(local, rows)
    stats, preds = eval_fn(state, mesh_lib.place_batch(local, mesh))
    total = stats if total is None else _tree_add(total, stats)
    if preds is not None:
      collected.append(jax.device_get(preds))  # replicated (out_shardings): on every host
  if total is None:
    return {}
  sums = jax.device_get(total)
  out = tasks_lib.means(sums)
  terms = [k for k in out if k.endswith("loss")]
  if "loss" not in out and terms:
    out["loss"] = sum(out[k] for k in terms)
  if task is not None and collected:
    joined = {k: np.concatenate([c[k] for c in collected]) for k in collected[0]}
    out.update(task.host_metrics(joined, sums, info or {}))
  return out


def translation_bleu(model, params, dataset, info: dict, *, num_batches: int, num_beams: int):
  """Corpus BLEU (sacrebleu) of greedy / beam-search translations of the first eval batches.

  Hypotheses and references are detokenised with the run's tokenizer; the reference is the
  target side of the batch (``tgt_out_ids`` up to EOS).
  """
  from zoo.generate import translate_ids  # noqa: PLC0415
  from zoo.generate.decoder import until_eos  # noqa: PLC0415

  tok = info.get("tokenizer")
  if tok is None or num_batches <= 0:
    return {}
  eos = info.get("eos_id")
  cfg = model.config
  room = cfg.max_len - cfg.position_offset - 1 if cfg.position != "rope" else None  # + start
  hyps, refs = [], []
  for i, local in enumerate(dataset):
    if i >= num_batches:
      break
    length = local["tgt_out_ids"].shape[1]
    out = translate_ids(
        model, params, np.asarray(local["src_ids"]),
        max_new_tokens=length if room is None else min(length, room),
        decoder_start_id=int(info["bos_id"]), eos_id=eos, num_beams=num_beams,
    )
    for hyp, ref in zip(out, np.asarray(local["tgt_out_ids"]), strict=True):
      hyps.append(tok.decode(until_eos(hyp, eos)))  # pad follows EOS in both
      refs.append(tok.decode(until_eos(ref, eos)))
  return {"bleu": eval_metrics.corpus_bleu(hyps, refs)} if refs else {}


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
  init = state_lib.make_init(
      model, tx, init_args, init_kwargs, shardings, dict(xla) or None, trainable
  )
  return Program(model, schedule, abstract, shardings, init, step, evaluate_fn)


def program_for(
    model_cfg: Any,
    task: tasks_lib.Task,
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


# ----------------------------------------------------------------------------------------------
# Building a run.


@dataclasses.dataclass
class Run:
  """A run ready to train: everything :meth:`run` needs, nothing trained yet.

  Made by :func:`build_run`. :meth:`run` advances ``state`` in place and closes the
  checkpointer at the end, so a ``Run`` trains once; build another to continue.
  """

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  rules: tuple
  info: dict[str, Any]  # the training dataset's facts: vocabulary, tokenizer, labels
  model_cfg: Any
  task: tasks_lib.Task
  prog: Program
  ckpt: ckpt_lib.Checkpointer
  train_ds: Any
  eval_ds: Any  # None when config.eval.every < 0
  state: TrainState
  rng: jax.Array  # the run's key: step N draws from fold_in(rng, N)
  start: int  # the state's step when the run was built
  window: dict[str, Any] | None = None  # metric sums since the last log row (from a checkpoint)
  notes: list[str] = dataclasses.field(default_factory=list)  # said at the start (init, LoRA)

  def run(self, stop_at: int | None = None) -> RunResult:
    """Train from :attr:`start` to ``train.num_steps`` (or ``stop_at``); see :func:`train`."""
    num_steps = int(self.config.train.num_steps)
    end = num_steps if stop_at is None else min(int(stop_at), num_steps)
    writer = self._writer(end)
    history = _History(self.ckpt, writer, self.window)
    stop = _StopSignals()
    actions = self.actions(history, writer, stop)
    final = self.start
    try:
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules), stop:
        final = self._steps(end, actions, history, writer, stop)
    finally:
      self.ckpt.close()
      writer.close()
    evaluated = next((a.result for a in actions if isinstance(a, Evaluate)), {})
    return self._finish(final, history.losses, evaluated, stop.received)

  def actions(
      self, history: _History, writer: metrics_lib.MetricWriter, stop: _StopSignals
  ) -> list[Action]:
    """What happens between steps, in this order: log, checkpoint, evaluate, stop."""
    config = self.config
    out = [
        LogTrain(int(config.train.log_every), history, writer), SaveCheckpoint(self.ckpt, history)
    ]
    if self.eval_ds is not None:
      rows = _eval_batch_size(config) // jax.process_count()
      out.append(Evaluate(
          int(config.eval.every), self.eval_ds, writer,
          rows=rows, num_batches=int(config.eval.num_batches),
      ))
    out.append(AnnounceStop(writer, stop))
    return out

  def _steps(self, end, actions, history, writer, stop) -> int:
    """The loop itself; returns the state's step at the end."""
    data = iter(self.train_ds)
    done = self.start
    for step in range(self.start, end):
      local = next(data)
      self.state, metrics = self.prog.step(
          self.state, mesh_lib.place_batch(local, self.mesh), self.rng
      )
      done = step + 1
      history.push(done, metrics)  # fetches step done - 1, now that step done is queued
      if step == self.start:
        history.flush()  # the first step includes compilation: keep it out of throughput
        self._start_clock(writer, done, local)
      else:
        writer.count(_units(self.task, local) * jax.process_count())
      stopping = stop.received  # read once: a signal arriving later is seen next step
      due = [a for a in actions if a.should_run(done, end, stopping)]
      if due:
        history.flush()  # a checkpoint is only written after its step's loss is known finite
      for action in due:
        action(self, done)
      if stopping:
        break
    history.flush()
    return done

  def _writer(self, end: int) -> metrics_lib.MetricWriter:
    config, mesh = self.config, self.mesh
    writer = metrics_lib.MetricWriter(
        self.workdir,
        total_steps=end,
        start_step=self.start,
        unit=self.task.unit,
        progress_bar=config.train.progress_bar,
    )
    family = registry.family_of(self.model_cfg).name
    num_params = count(self.prog.abstract.params)
    writer.message(
        f"{config.model.name} ({family}, {num_params / 1e6:.2f}M params) task={config.task} "
        f"mesh={dict(mesh.shape)} steps {self.start}->{end} workdir={self.workdir}"
    )
    for note in self.notes:
      writer.message(note)
    return writer

  def _start_clock(self, writer: metrics_lib.MetricWriter, step: int, local) -> None:
    """Throughput counts from ``step``; MFU needs the step's FLOPs and the devices' peak."""
    writer.reset_clock(step)
    peak = metrics_lib.peak_flops(self.mesh.devices.flat[0])
    if peak:
      flops = _flops_per_step(self.model_cfg, local, self.prog.abstract.params)
      writer.flops_per_step = flops * jax.process_count()
      writer.peak = peak * self.mesh.size

  def _finish(self, final: int, losses, evaluated, interrupted: str | None) -> RunResult:
    """Loss plot and (lm) a text sample on process 0, outside the mesh, as a last word."""
    config = self.config
    sample = None
    if jax.process_index() == 0:
      if config.train.plot:
        metrics_lib.plot_losses(self.workdir)
      if config.task == "lm" and config.sample.num_tokens > 0 and not interrupted:
        sample = sample_text(
            self.prog.model, trainable_lib.merge(self.state.params), self.info, config.sample,
            seed=config.seed,
        )
        print(f"--- sample ---\n{sample}\n--------------", flush=True)
    return RunResult(
        step=final, losses=losses, eval=evaluated, state=self.state, interrupted=interrupted,
        sample=sample,
    )


def _eval_batch_size(config) -> int:
  return int(config.eval.batch_size or config.train.batch_size)


def _datasets(config, mesh: Mesh, dataset_fn: Callable) -> tuple[Any, Any]:
  """``(train, eval or None)`` datasets of this process, batch sizes checked against ``mesh``."""
  tc = config.train
  mesh_lib.check_batch_size(tc.batch_size, mesh, int(tc.grad_accum_steps))
  do_eval = int(config.eval.every) >= 0
  if do_eval:
    mesh_lib.check_batch_size(_eval_batch_size(config), mesh)
  proc = {"process_index": jax.process_index(), "process_count": jax.process_count()}
  train_ds = dataset_fn(
      config.data, split="train", global_batch_size=tc.batch_size, seed=config.seed, **proc
  )
  eval_ds = None
  if do_eval:
    eval_ds = dataset_fn(
        config.data, split=config.eval.split, global_batch_size=_eval_batch_size(config),
        seed=config.seed, **proc,
    )
  return train_ds, eval_ds


def _initial_state(prog: Program, ckpt, train_ds, mesh: Mesh, rules, seed: int, fitted=None):
  """``(state, rng, window)``: the latest checkpoint (with the data position and metrics
  window), else a fresh state (window None), with the pretrained weights of ``fitted``
  (``config.init.path``) in place."""
  rng = jax.random.PRNGKey(seed)
  if ckpt.latest_step() is None:
    state = init_state(prog, mesh, rules, rng)
    if fitted is not None:
      state = state.replace(params=_with_pretrained(state.params, fitted))
    return state, rng, None
  state, meta = ckpt.restore(prog.abstract)
  if meta.get("data") is not None:
    train_ds.set_state(meta["data"])
  log.info("resumed step %d from %s", int(state.step), ckpt.directory)
  return state, ckpt_lib.rng_from_meta(meta), meta.get("window") or {}


def _with_pretrained(params, fitted):
  """``params`` (fresh, sharded) with every leaf the checkpoint provides replaced by its value.

  Each leaf is built in its own sharding from the host copy every process holds
  (``make_array_from_callback``), so nothing is gathered on one device.
  """
  tree = traverse_util.unflatten_dict(fitted.flat, sep="/")
  if getattr(fitted.model.config, "scan_layers", False):
    tree = scan_params(tree)
  loaded = traverse_util.flatten_dict(tree, sep="/")
  out = {}
  for path, leaf in traverse_util.flatten_dict(params, sep="/").items():
    if path in loaded:
      host = np.asarray(loaded[path]).astype(leaf.dtype)
      out[path] = jax.make_array_from_callback(host.shape, leaf.sharding, lambda i, h=host: h[i])
    else:
      out[path] = leaf  # a fresh head, or a LoRA adapter
  return traverse_util.unflatten_dict(out, sep="/")


def _pretrained(config) -> tuple[ml_collections.ConfigDict, Any]:
  """``(config, weights)``: for ``config.init.path``, its weights and a config whose data reads
  the checkpoint's tokenizer (and image statistics); ``(config, None)`` without one."""
  if not config.get("init") or not config.init.path:
    return config, None
  from zoo import pretrained  # noqa: PLC0415
  from zoo.data.tokenizers import tokenizer_file  # noqa: PLC0415

  path = pretrained.api.resolve(config.init.path)
  weights = pretrained.api.read(path, step=config.init.step)
  config = config.copy_and_resolve_references()
  source = weights.info.get("tokenizer_path") or (path if os.path.isdir(path) else None)
  has_tokenizer = source and (os.path.isfile(source) or tokenizer_file(source) is not None)
  if "tokenizer" in config.data and config.init.get("tokenizer", True) and has_tokenizer:
    config.data.tokenizer = source
  if config.task == "image_classification" and os.path.isdir(path):
    pre = pretrained.checkpoint_io.read_json(
        os.path.join(path, "preprocessor_config.json"), missing_ok=True)
    for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
      if config.data.get(ours) is None and pre.get(theirs) is not None:
        config.data[ours] = tuple(pre[theirs])
  return config, weights


def _fit_pretrained(weights, model_cfg):
  """The checkpoint's weights for ``model_cfg``: loaded, new (fresh heads) and dropped; the
  fitted model's config adds what the head implies (``assemble.fit``)."""
  from zoo.pretrained import assemble  # noqa: PLC0415

  base = weights.config
  changed = {
      n: getattr(model_cfg, n) for n in registry.field_names(type(model_cfg))
      if getattr(model_cfg, n) != getattr(base, n)
  }
  return assemble.fit(weights, None, changed)


def _trainable(config, fitted) -> trainable_lib.Trainable:
  """The run's :class:`Trainable`; fresh heads train even when the backbone is frozen."""
  spec = trainable_lib.Trainable.from_config(config)
  if fitted is not None and fitted.new and spec.active:
    heads = sorted({p.split("/")[0] for p in fitted.new})
    fresh = "^(" + "|".join(re.escape(h) for h in heads) + ")/"
    keep = f"{spec.always_train}|{fresh}" if spec.always_train else fresh
    spec = dataclasses.replace(spec, always_train=keep)
  return spec


def data_facts(info: dict[str, Any]) -> dict[str, Any]:
  """The JSON facts of a dataset that export needs: labels, special ids, tokenizer file."""
  out = {k: info[k] for k in ("pad_id", "bos_id", "eos_id", "cls_id", "sep_id", "mask_id")
         if info.get(k) is not None}
  if info.get("label_names"):
    out["label_names"] = [str(n) for n in info["label_names"]]
  name = getattr(info.get("tokenizer"), "name", None)
  if isinstance(name, str) and os.path.exists(name):
    out["tokenizer_path"] = os.path.abspath(name)
  return out


def _notes(fitted, trainable, params) -> list[str]:
  """What the start of a fine-tuning run says: tensors loaded / new / dropped, what trains."""
  out = []
  if fitted is not None:
    out.append(
        f"init: {len(fitted.flat)} tensors loaded, {len(fitted.new)} new"
        + (f" ({', '.join(fitted.new)})" if fitted.new else "")
        + f", {len(fitted.dropped)} dropped"
        + (f" ({', '.join(fitted.dropped)})" if fitted.dropped else "")
    )
  if trainable.active:
    n = trainable_lib.counts(params, trainable)
    out.append(
        f"trainable: {n['trainable'] / 1e6:.3f}M of {n['total'] / 1e6:.3f}M parameters "
        f"({n['frozen'] / 1e6:.3f}M frozen, {n['adapters'] / 1e6:.3f}M LoRA adapters)"
    )
  return out


def build_run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: list[jax.Device] | None = None,
    dataset_fn: Callable | None = None,
) -> Run:
  """Everything the run described by ``config`` needs, restored from ``workdir`` if it can be.

  Arguments as for :func:`train`. Writes ``<workdir>/config.json`` (process 0); trains nothing.

  Raises:
    ValueError: bad config (indivisible batch, another model's checkpoint in ``workdir`` ...).
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(
        f"--workdir {workdir} is a file; give a directory (it is created if missing)."
    )
  config, weights = _pretrained(config)
  tc = config.train
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.rules_from_config(config)
  train_ds, eval_ds = _datasets(config, mesh, dataset_fn or _default_dataset_fn())
  info = dict(train_ds.info)

  model_cfg = config_lib.model_config(config, info, base=weights.config if weights else None)
  fitted = _fit_pretrained(weights, model_cfg) if weights is not None else None
  if fitted is not None:  # what a head implies (a BERT tagger drops the pooler), as exported
    model_cfg = fitted.model.config
  if fitted is not None and not config.init.get("weights", True):
    fitted = None  # the checkpoint's architecture and tokenizer, trained from scratch
  task = tasks_lib.get_task(config.task, config.label_smoothing)
  trainable = _trainable(config, fitted)
  prog = program_for(
      model_cfg, task, config.optim, num_steps=int(tc.num_steps), mesh=mesh, rules=rules,
      grad_accum_steps=int(tc.grad_accum_steps), compiler_options=tc.compiler_options.to_dict(),
      trainable=trainable,
  )
  ckpt = ckpt_lib.Checkpointer(
      workdir,
      every=tc.checkpoint_every,
      keep=tc.keep_checkpoints,
      fingerprint=config_lib.fingerprint(model_cfg, config.task),
      model_config=registry.config_to_json(model_cfg),
      data_info=data_facts(info),
  )
  try:
    state, rng, window = _initial_state(prog, ckpt, train_ds, mesh, rules, config.seed, fitted)
  except BaseException:
    ckpt.close()  # e.g. another model's checkpoint: nothing of this run is left running
    raise
  if jax.process_index() == 0:  # the run config next to its checkpoints (zoo.generate reads it)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return Run(
      config=config, workdir=workdir, mesh=mesh, rules=rules, info=info, model_cfg=model_cfg,
      task=task, prog=prog, ckpt=ckpt, train_ds=train_ds, eval_ds=eval_ds, state=state,
      rng=rng, start=int(jax.device_get(state.step)), window=window,
      notes=_notes(None if window is not None else fitted, trainable, prog.abstract.params),
  )


# ----------------------------------------------------------------------------------------------
# Running it: metrics on their way to the host, and the actions between steps.


class _History:
  """Training metrics on their way to the host.

  :meth:`push` queues a step's metrics and fetches the previous step's, so the host reads
  step ``N`` only once ``N + 1`` is queued behind it. Fetching checks that the loss is finite,
  keeps it (``losses``) and adds every metric to the window the next log row averages.
  """

  def __init__(
      self, ckpt: ckpt_lib.Checkpointer, writer: metrics_lib.MetricWriter,
      window: dict[str, Any] | None = None,
  ):
    self.ckpt = ckpt
    self.writer = writer
    self.losses: dict[int, float] = {}
    window = window or {}
    self._window: dict[str, float] = dict(window.get("sums", {}))
    self._rows = int(window.get("rows", 0))
    self._pending = None

  def window(self) -> dict[str, Any]:
    """The sums and row count since the last log row (JSON: goes into a checkpoint)."""
    return {"sums": dict(self._window), "rows": self._rows}

  def push(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.flush()
    self._pending = (step, metrics)

  def flush(self) -> None:
    """Fetch the queued step's metrics, if any (waits for that step)."""
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    m = jax.device_get(metrics)
    if not (_finite(m["loss"]) and _finite(m["grad_norm"])):
      raise self._non_finite(step, m)
    self.losses[step] = float(m["loss"])
    for k, v in m.items():
      self._window[k] = self._window.get(k, 0.0) + float(v)
    self._rows += 1
    self.writer.progress(step, {"loss": float(m["loss"])})

  def window_means(self) -> dict[str, float]:
    """Means since the last call (empty when no step was fetched since)."""
    out = {k: v / self._rows for k, v in self._window.items()} if self._rows else {}
    self._window.clear()
    self._rows = 0
    return out

  def _non_finite(self, step: int, m) -> NonFiniteLossError:
    self.ckpt.wait()  # a checkpoint being written is a good one once written
    good = self.ckpt.latest_step()
    if good is None:
      kept = "no checkpoint was saved before it"
    else:
      kept = f"the last good checkpoint is step {good} in {self.ckpt.directory}"
    return NonFiniteLossError(
        f"loss became {float(m['loss'])} (grad_norm {float(m['grad_norm'])}) at step {step}; "
        f"stopping. {kept}. Lower optim.lr, raise optim.warmup_steps, set optim.clip_norm, "
        "or check the data of that step.",
        step,
    )


class Action:
  """Something done between steps (big_vision's and nanodo's periodic actions).

  After each step the loop asks every action :meth:`should_run`; the ones that say yes are
  called in list order, once that step's metrics are on the host and known finite.
  """

  every: int = 0  # steps between runs; 0 or less: not periodic

  def should_run(self, step: int, end: int, stopping: str | None) -> bool:
    """``step``: the state's step now; ``end``: this call's last step; ``stopping``: the
    signal received (``"SIGTERM"``), if any."""
    del end, stopping
    return self.every > 0 and step % self.every == 0

  def __call__(self, run: Run, step: int) -> None:
    raise NotImplementedError


class LogTrain(Action):
  """A ``train`` row: metric means since the last row, throughput and MFU."""

  def __init__(self, every: int, history: _History, writer: metrics_lib.MetricWriter):
    self.every, self.history, self.writer = every, history, writer

  def should_run(self, step, end, stopping):
    return super().should_run(step, end, stopping) or step == end

  def __call__(self, run, step):
    row = self.history.window_means()
    if row:
      row.update(self.writer.throughput(step))
      self.writer.write(step, "train", row)


class SaveCheckpoint(Action):
  """State, key, data position and metrics window: every ``ckpt.every`` steps, at the end and
  on a signal."""

  def __init__(self, ckpt: ckpt_lib.Checkpointer, history: _History):
    self.every, self.history = ckpt.every, history

  def should_run(self, step, end, stopping):
    return super().should_run(step, end, stopping) or step == end or bool(stopping)

  def __call__(self, run, step):
    run.ckpt.save(step, run.state, rng=run.rng, data_state=run.train_ds.get_state(),
                  window=self.history.window(), force=True)


class Evaluate(Action):
  """Padding-aware means over the eval split: every ``every`` steps (0: never periodically)
  and after the last step, unless a signal stopped the run; ``result`` is the last one."""

  def __init__(self, every, dataset, writer: metrics_lib.MetricWriter, *, rows, num_batches):
    self.every, self.dataset, self.writer = every, dataset, writer
    self.rows, self.num_batches = rows, num_batches
    self.result: dict[str, float] = {}

  def should_run(self, step, end, stopping):
    return super().should_run(step, end, stopping) or (step == end and not stopping)

  def __call__(self, run, step):
    self.result = evaluate(
        run.prog.eval, run.state, self.dataset, run.mesh, rows=self.rows,
        num_batches=self.num_batches, task=run.task, info=run.info,
    )
    decode = int(run.config.eval.get("decode_batches", 0))
    if run.config.task == "translation" and decode > 0:
      self.result.update(translation_bleu(
          run.prog.model, trainable_lib.merge(run.state.params), self.dataset, run.info,
          num_batches=decode, num_beams=int(run.config.eval.get("num_beams", 1)),
      ))
    self.writer.write(step, "eval", self.result)
    self.writer.reset_clock(step)  # evaluation time is not training throughput


class AnnounceStop(Action):
  """After a SIGTERM / SIGINT (the step is saved by then): say how to resume; the loop stops."""

  def __init__(self, writer: metrics_lib.MetricWriter, signals: _StopSignals):
    self.writer, self.signals = writer, signals

  def should_run(self, step, end, stopping):
    return bool(stopping)

  def __call__(self, run, step):
    self.writer.message(
        f"{self.signals.received}: saved step {step} in {run.ckpt.directory}; run the same command "
        "again to resume."
    )


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: list[jax.Device] | None = None,
    stop_at: int | None = None,
    dataset_fn: Callable | None = None,
) -> RunResult:
  """Train (or resume) the run described by ``config`` in ``workdir``.

  ``build_run(config, workdir, ...).run(stop_at)``.

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
  return build_run(config, workdir, devices=devices, dataset_fn=dataset_fn).run(stop_at)


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
