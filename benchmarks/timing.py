"""Timing and memory: one framework ready to step (:class:`Prepared`), how its steps are timed,
what they achieve (:func:`rates`), and the host memory they peak at (:class:`HostMemory`).

Every timed call waits for its own result (``jax.block_until_ready`` /
``torch.cuda.synchronize``); the reported step time is the median of the timed steps, with the
fastest one beside it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import cases


@dataclasses.dataclass
class Prepared:
  """One framework, compiled and warmed up, ready for timed steps.

  ``train`` / ``forward`` run one step and wait for it; ``set_mode("train" | "forward")``
  switches a PyTorch module between ``train()`` and ``eval()``; ``result`` already holds
  compile times, the first loss and the peak memory, and receives the timings.
  """

  result: dict[str, Any]
  train: Callable[[], Any] | None = None
  forward: Callable[[], Any] | None = None
  compiled: Any = None  # zoo: the compiled train step (benchmarks.profile reads its HLO)
  step_fn: Any = None  # zoo: the jitted step it was compiled from, ``program.step``
  program: Any = None  # zoo: the training loop's ``steps.Program`` it belongs to
  set_mode: Callable[[str], Any] = lambda mode: None


def first_call(fn: Callable[[], Any]) -> float:
  """Seconds of one call of ``fn`` (the first one: where a lazy compiler compiles)."""
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def timed(fn: Callable[[], Any], warmup: int, steps: int) -> dict[str, Any]:
  """Time ``fn`` (which must wait for its own result): one untimed first call (``first_s``),
  ``warmup`` more untimed calls, then ``steps`` timed ones (median ``step_s``)."""
  first = first_call(fn)
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return {"first_s": first, "times_s": times, "step_s": statistics.median(times),
          "min_s": min(times)}


def time_steps(prepared: list[Prepared], part: str, steps: int, warmup: int = 0) -> None:
  """``warmup`` untimed then ``steps`` timed calls of each framework's ``part``, round robin.

  Round robin rather than one framework after the other: on a shared machine the load drifts
  over minutes, and interleaving exposes every framework to the same drift.
  """
  live = [p for p in prepared if getattr(p, part) is not None]
  for p in live:
    p.set_mode(part)
    for _ in range(warmup):
      getattr(p, part)()
    p.result[part]["times_s"] = []
  for _ in range(steps):
    for p in live:
      t = time.perf_counter()
      getattr(p, part)()
      p.result[part]["times_s"].append(time.perf_counter() - t)
  for p in live:
    times = p.result[part]["times_s"]
    p.result[part]["step_s"] = statistics.median(times)
    p.result[part]["min_s"] = min(times)


def rates(case: cases.Case, step_s: float, peak: float | None) -> dict[str, Any]:
  """Units per second, TFLOP/s and MFU (None without a peak) of a train step of ``step_s``."""
  out = {"units_per_s": case.units / step_s}
  out["tflops_per_s"] = {k: f / step_s / 1e12 for k, f in case.flops.items()}
  out["mfu"] = {k: (f / step_s / peak if peak else None) for k, f in case.flops.items()}
  return out


def _status_kb(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def _reset_host_peak() -> bool:
  """Linux: writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return _status_kb("VmHWM") is not None
  except OSError:
    return False


def trim_host_heap() -> None:
  """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``;
  elsewhere only the collection), so that an RSS reading counts live memory, not memory an
  earlier phase or case freed and the allocator kept."""
  gc.collect()
  try:
    ctypes.CDLL(None).malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass


# What each figure of a CPU ``memory`` entry is (``HostMemory.peak``), for the JSON.
HOST_MEMORY_HOW = {
    "bytes": "peak host RSS during one steady-state train step",
    "build_bytes": "host RSS once the parameters (zoo: and the optimizer state) exist, after "
                   "gc + malloc_trim",
    "compile_peak_bytes": "peak host RSS from the build through the first train step (zoo: "
                          "init, lower + compile, first step; PyTorch: first step, where AdamW "
                          "creates its state and torch.compile compiles)",
    "base": "each minus the host RSS before the model was built, after gc + malloc_trim; "
            "malloc_trim again before the steady-state step, the same for every framework",
}


class HostMemory:
  """Host RSS of one framework's phases above the RSS before its model was built (CPU runs).

  ``start()`` before the model is built, ``built()`` once its parameters exist, ``arm()`` after
  the first (compiling) train step, ``peak()`` after one more step. Three figures with the same
  definition for zoo and every peer (:data:`HOST_MEMORY_HOW`): RSS after the build, peak up to
  the end of the first step (compile), peak during the later step (steps). The heap is trimmed
  at ``start()`` (an earlier case's freed memory would otherwise be reused unseen and shrink
  this one's figures) and at ``arm()``. Without ``/proc`` (not Linux) the process-wide
  ``ru_maxrss`` is reported and says so.
  """

  base_kb: int | None = None
  build_kb: int | None = None
  compile_hwm_kb: int | None = None
  resettable: bool = False

  def start(self):
    trim_host_heap()
    self.base_kb = _status_kb("VmRSS")
    self.resettable = self.base_kb is not None and _reset_host_peak()

  def built(self):
    trim_host_heap()  # what the build freed (zoo: the initialiser's temporaries) is not counted
    self.build_kb = _status_kb("VmRSS")

  def arm(self):
    if self.resettable:
      self.compile_hwm_kb = _status_kb("VmHWM")
      trim_host_heap()
      self.resettable = _reset_host_peak()

  def peak(self) -> dict[str, Any]:
    if self.resettable:
      hwm = _status_kb("VmHWM")
      above = lambda kb: None if kb is None else (kb - self.base_kb) * 1024  # noqa: E731
      return {"bytes": above(hwm), "build_bytes": above(self.build_kb),
              "compile_peak_bytes": above(self.compile_hwm_kb), "how": dict(HOST_MEMORY_HOW)}
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"bytes": kb * 1024, "how": "host ru_maxrss of the whole process"}
