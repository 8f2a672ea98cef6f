"""What a run reports: progress bar, JSONL + TensorBoard logs, throughput, MFU, a loss plot.

Only process 0 writes. ``<workdir>/metrics.jsonl`` has one JSON object per logged step
(``{"step": ..., "split": "train"|"eval", ...}``); TensorBoard events go to
``<workdir>/tensorboard``; ``<workdir>/loss.png`` is drawn at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any

import jax

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device (vendor data sheets; no sparsity): the one table the loop's
# MFU and the benchmarks' use. Matched as substrings of ``device.device_kind``, first hit wins,
# so more specific names come first ("H100 PCIe" before "H100", "TPU v5 lite" before "TPU v5").
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),  # SXM
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("V100", 125e12),  # fp16 tensor cores
    ("TPU v6 lite", 918e12),  # v6e
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports itself as "TPU v5"
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("TPU v2", 45e12),
)


def peak_flops_entry(device: jax.Device | None = None) -> tuple[str, float] | None:
  """``(table name, FLOP/s)`` of the :data:`PEAK_FLOPS` row matching the device, or None."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "").lower()
  return next(((n, f) for n, f in PEAK_FLOPS if n.lower() in kind), None)


def peak_flops(device: jax.Device | None = None) -> float | None:
  """The device's dense bf16 peak in FLOP/s, or None when unknown (CPUs)."""
  entry = peak_flops_entry(device)
  return entry[1] if entry else None


def _summary_writer(logdir: str):
  """``tensorboardX.SummaryWriter`` without importing torch.

  tensorboardX imports torch (seconds of start-up) only to recognise torch tensors; we log
  Python floats. Torch stays importable afterwards for anyone who wants it.
  """
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError inside tensorboardX
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  finally:
    if blocked:
      del sys.modules["torch"]
  return SummaryWriter(logdir)


class MetricWriter:
  """Progress bar + JSONL + TensorBoard for one run (silent on processes other than 0)."""

  def __init__(
      self,
      workdir: str,
      *,
      total_steps: int,
      start_step: int,
      unit: str,
      progress_bar: bool = True,
  ):
    self.workdir = workdir
    self.active = jax.process_index() == 0
    self.unit = unit
    self.total_steps = total_steps
    # Set by the loop once a batch shape is known: FLOPs of one step, summed peak FLOP/s.
    self.flops_per_step: float | None = None
    self.peak: float | None = None
    self._bar = None
    self._postfix: dict[str, str] = {}
    self._tb = None
    self._jsonl = None
    self._window_start = (start_step, time.perf_counter(), 0)
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
    try:
      self._tb = _summary_writer(os.path.join(workdir, "tensorboard"))
    except Exception as e:  # noqa: BLE001 - logging must never kill a run
      log.warning("no TensorBoard events: %s", e)
    if progress_bar:
      from tqdm.auto import tqdm  # noqa: PLC0415

      # disable=None: no bar when stderr is not a terminal (logs get the rows printed instead).
      self._bar = tqdm(
          total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=None
      )

  def reset_clock(self, step: int) -> None:
    """Start the throughput window at ``step`` (after compilation, after evaluation)."""
    self._window_start = (step, time.perf_counter(), 0)

  def count(self, units: int) -> None:
    s, t, n = self._window_start
    self._window_start = (s, t, n + units)

  def throughput(self, step: int) -> dict[str, float]:
    """Steps/s, units/s and MFU since the window started; restarts the window."""
    start, t0, units = self._window_start
    dt = time.perf_counter() - t0
    self._window_start = (step, time.perf_counter(), 0)
    if dt <= 0 or step <= start:
      return {}
    out = {"steps_per_sec": (step - start) / dt, f"{self.unit}_per_sec": units / dt}
    if self.flops_per_step and self.peak:
      out["mfu"] = self.flops_per_step * (step - start) / dt / self.peak
    return out

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not self.active:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    row = {
        "step": int(step), "split": split,
        **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()},
    }
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(f"{split}/{k}", v, step)
      self._tb.flush()
    if split == "train":
      speed = {k: clean[k] for k in (f"{self.unit}_per_sec", "mfu") if k in clean}
      self.progress(step, speed)
    shown = {k: v for k, v in clean.items() if k != "learning_rate"}
    self.message(f"{split} @ {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))

  def progress(self, step: int, postfix: dict[str, float]) -> None:
    """Move the bar to ``step``; ``postfix`` values are shown next to it until replaced."""
    if self._bar is not None:
      self._postfix.update({k: f"{v:.4g}" for k, v in postfix.items()})
      self._bar.n = step
      self._bar.set_postfix(self._postfix, refresh=True)

  def message(self, text: str) -> None:
    if not self.active:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


def read_jsonl(workdir: str) -> list[dict[str, Any]]:
  """Rows of ``<workdir>/metrics.jsonl`` (a resumed run appends to the same file)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")
  # The last piece is "" after a complete file, or a row still being written: skip it.
  return [json.loads(line) for line in lines[:-1] if line.strip()]


def plot_losses(workdir: str) -> str | None:
  """Train and eval loss against step -> ``<workdir>/loss.png``; returns the path."""
  rows = read_jsonl(workdir)
  if not rows:
    return None
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(7, 4))
  for split, style in (("train", "-"), ("eval", "o-")):
    pts = {}
    for r in rows:  # a resumed run may repeat steps: the last row wins
      if r.get("split") == split and isinstance(r.get("loss"), (int, float)):
        pts[r["step"]] = r["loss"]
    if pts:
      steps = sorted(pts)
      ax.plot(steps, [pts[s] for s in steps], style, label=f"{split} loss", markersize=3)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "loss.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
