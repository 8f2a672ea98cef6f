"""The one training loop: every family and task, any mesh, exact resume.

A run is built, then run: :func:`build_run` makes the mesh, datasets, model config, the compiled
:class:`~zoo.training.steps.Program`, the checkpointer and the starting state; :meth:`Run.run`
is a short loop over steps with a list of :class:`~zoo.training.actions.Action` objects around
it (log, checkpoint, evaluate, stop on a signal), as in nanodo and big_vision. :func:`train` is
both. The metrics of step ``N`` are fetched after step ``N + 1`` has been dispatched, so the host
never stalls the device except at logging, evaluation and checkpoint steps. The task (found
through ``zoo.registry.task``) says what a batch means, how it is scored and what is said at
the end; fine-tuning set-up is :mod:`~zoo.training.finetune`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

from zoo import registry
from zoo.models.common import count
from zoo.tasks import Task
from zoo.training import actions as actions_lib
from zoo.training import checkpoint as ckpt_lib
from zoo.training import config as config_lib
from zoo.training import finetune
from zoo.training import mesh as mesh_lib
from zoo.training import metrics as metrics_lib
from zoo.training import trainable as trainable_lib
from zoo.training.actions import NonFiniteLossError
from zoo.training.state import TrainState
from zoo.training.steps import Program, init_state, program_for

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "Run", "RunResult", "build_run", "train"]


@dataclasses.dataclass
class RunResult:
  """What :func:`train` / :meth:`Run.run` return (also written to the workdir)."""

  step: int  # the state's step at the end
  losses: dict[int, float]  # step -> training loss of every step run in this call
  eval: dict[str, float]  # last evaluation
  state: TrainState
  interrupted: str | None = None  # "SIGTERM" / "SIGINT" when stopped by a signal
  sample: str | None = None


def _default_dataset_fn():
  from zoo import data as data_lib  # noqa: PLC0415

  return data_lib.build_dataset


def _units(task, batch) -> int:
  return task.units({k: tuple(np.shape(v)) for k, v in batch.items()})


def _flops_per_step(model_cfg, batch, params) -> float:
  shapes = {k: tuple(np.shape(v)) for k, v in batch.items()}
  return registry.family_of(model_cfg).train_flops(model_cfg, params, shapes)["full"]


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
  task: Task
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
    history = actions_lib.History(self.ckpt, writer, self.window)
    stop = actions_lib.StopSignals()
    actions = self.actions(history, writer, stop)
    final = self.start
    try:
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules), stop:
        final = self._steps(end, actions, history, writer, stop)
    finally:
      self.ckpt.close()
      writer.close()
    evaluated = next((a.result for a in actions if isinstance(a, actions_lib.Evaluate)), {})
    return self._finish(final, history.losses, evaluated, stop.received)

  def actions(
      self, history: actions_lib.History, writer: metrics_lib.MetricWriter,
      stop: actions_lib.StopSignals,
  ) -> list[actions_lib.Action]:
    """What happens between steps, in this order: log, checkpoint, evaluate, stop."""
    config = self.config
    out = [
        actions_lib.LogTrain(int(config.train.log_every), history, writer),
        actions_lib.SaveCheckpoint(self.ckpt, history),
    ]
    if self.eval_ds is not None:
      rows = _eval_batch_size(config) // jax.process_count()
      out.append(actions_lib.Evaluate(
          int(config.eval.every), self.eval_ds, writer,
          rows=rows, num_batches=int(config.eval.num_batches),
      ))
    out.append(actions_lib.AnnounceStop(writer, stop))
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
      if not interrupted:
        sample = self.task.sample(
            self.prog.model, trainable_lib.merge_adapters(self.state.params), self.info, config
        )
      if sample is not None:
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
      state = state.replace(params=finetune.with_pretrained(state.params, fitted))
    return state, rng, None
  state, meta = ckpt.restore(prog.abstract)
  if meta.get("data") is not None:
    train_ds.set_state(meta["data"])
  log.info("resumed step %d from %s", int(state.step), ckpt.directory)
  return state, ckpt_lib.rng_from_meta(meta), meta.get("window") or {}


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
  config, weights = finetune.pretrained_config(config)
  tc = config.train
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.rules_from_config(config)
  train_ds, eval_ds = _datasets(config, mesh, dataset_fn or _default_dataset_fn())
  info = dict(train_ds.info)

  model_cfg = config_lib.model_config(config, info, base=weights.config if weights else None)
  fitted = finetune.fit_pretrained(weights, model_cfg) if weights is not None else None
  if fitted is not None:  # what a head implies (a BERT tagger drops the pooler), as exported
    model_cfg = fitted.model.config
  if fitted is not None and not config.init.get("weights", True):
    fitted = None  # the checkpoint's architecture and tokenizer, trained from scratch
  task = dataclasses.replace(  # the fused loss off (config.train.fused_loss=False) for A/B
      registry.task(config.task, config.label_smoothing),
      fused_loss=bool(tc.get("fused_loss", True)),
  )
  trainable = finetune.trainable_spec(config, fitted)
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
      notes=finetune.notes(None if window is not None else fitted, trainable, prog.abstract.params),
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
