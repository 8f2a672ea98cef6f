"""The machine a benchmark runs on: device, cores, library versions, load, peak FLOP/s.

:func:`environment` is the block every report starts with; :func:`device_peak` is the number
MFU is computed against (a flag, the training loop's data-sheet table, or a measured matmul).
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp


def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def num_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def device_name() -> str:
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return f"CPU: {cpu_model()}, {num_cores()} cores"
  return f"{dev.platform.upper()}: {dev.device_kind}"


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "timm"):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      out[name] = "not installed"
  return out


def load_average() -> list[float] | None:
  """The 1, 5 and 15 minute load averages, rounded; None where the platform has none."""
  if not hasattr(os, "getloadavg"):
    return None
  return [round(x, 2) for x in os.getloadavg()]


def measured_cpu_peak() -> float:
  """FLOP/s of a float32 2048^3 matmul in XLA: a practical CPU ceiling, not a data-sheet one."""
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(3):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / min(times)


def device_peak(args) -> tuple[float | None, str]:
  """``(peak FLOP/s or None, where it came from)``."""
  if args.peak_tflops:
    return args.peak_tflops * 1e12, f"{args.peak_tflops:g} TFLOP/s (--peak-tflops)"
  from zoo.training import metrics as metrics_lib  # noqa: PLC0415

  entry = metrics_lib.peak_flops_entry(jax.devices()[0])  # the training loop's table
  if entry:
    name, flops = entry
    return flops, f"{name}: {flops / 1e12:g} TFLOP/s dense bf16 (data sheet)"
  if args.measure_peak and not on_gpu():
    peak = measured_cpu_peak()
    return peak, f"{peak / 1e12:.3f} TFLOP/s (measured float32 2048³ matmul, XLA)"
  return None, "unknown (MFU n/a; pass --peak-tflops, or --measure-peak on CPU)"


def environment(args) -> dict[str, Any]:
  """The report's environment block: where, when, with what, and the settings of the run."""
  peak, peak_source = device_peak(args)
  env = {
      "date": datetime.date.today().isoformat(),
      "device": device_name(),
      "backend": jax.default_backend(),
      "dtype": args.dtype,
      "threads": args.threads,
      "versions": versions(),
      "peak_flops": peak,
      "peak_source": peak_source,
      "smoke": bool(args.smoke),
      "steps": args.steps,
      "warmup": args.warmup,
      "schedule": args.schedule,
  }
  load = load_average()
  if load is not None:
    env["load_average"] = load
  return env
