"""What happens between training steps: metrics on their way to the host, and the actions.

After each step the loop asks every :class:`Action` whether it is due (log a row, save a
checkpoint, evaluate, announce a stop) and calls the due ones in order, once the step's loss is
known to be finite (:class:`History`), as big_vision's and nanodo's periodic actions do.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np

from zoo.training import checkpoint as ckpt_lib
from zoo.training import metrics as metrics_lib
from zoo.training import trainable as trainable_lib
from zoo.training.steps import evaluate


class NonFiniteLossError(FloatingPointError):
  """The loss (or gradient norm) became NaN or inf; ``step`` is the step that produced it."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class StopSignals:
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


def _finite(x) -> bool:
  return bool(np.all(np.isfinite(np.asarray(x))))


class History:
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

  def __call__(self, run: Any, step: int) -> None:
    """Act on ``run`` (the loop's ``Run``: state, checkpointer, mesh, task) at ``step``."""
    raise NotImplementedError


class LogTrain(Action):
  """A ``train`` row: metric means since the last row, throughput and MFU."""

  def __init__(self, every: int, history: History, writer: metrics_lib.MetricWriter):
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

  def __init__(self, ckpt: ckpt_lib.Checkpointer, history: History):
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
    # The training data's facts, and the evaluation split's own (a QA split's windows).
    info = {**run.info, **getattr(self.dataset, "info", {})}
    self.result = evaluate(
        run.prog.eval, run.state, self.dataset, run.mesh, rows=self.rows,
        num_batches=self.num_batches, task=run.task, info=info,
    )
    self.result.update(run.task.decode_metrics(
        run.prog.model, trainable_lib.merge_adapters(run.state.params), self.dataset, info,
        run.config.eval,
    ))
    self.writer.write(step, "eval", self.result)
    self.writer.reset_clock(step)  # evaluation time is not training throughput


class AnnounceStop(Action):
  """After a SIGTERM / SIGINT (the step is saved by then): say how to resume; the loop stops."""

  def __init__(self, writer: metrics_lib.MetricWriter, signals: StopSignals):
    self.writer, self.signals = writer, signals

  def should_run(self, step, end, stopping):
    return bool(stopping)

  def __call__(self, run, step):
    self.writer.message(
        f"{self.signals.received}: saved step {step} in {run.ckpt.directory}; run the same command "
        "again to resume."
    )
