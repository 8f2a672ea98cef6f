"""What every benchmark script shares: cases, timing, memory, FLOPs, both frameworks, output.

A script describes *cases* (one model at one shape): how to build the zoo model and its batch,
and how to build each peer (a Hugging Face or timm PyTorch module with the same architecture,
size and batch). :func:`run` measures zoo and every peer in the same process, one after the
other, and reports for each:

* the training step: loss, backward, AdamW update (lr 1e-4, weight decay 0.01, no clipping on
  both sides). zoo: the training loop's own step, ``zoo.training.loop.program(...).step``
  (``loop.train_step`` jitted with the state donated, what ``train.py`` runs) on a one-device
  mesh, lowered and compiled ahead of time (compile time = lower + compile); PyTorch: the
  ordinary loop
  ``model(**inputs, labels=...).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)``,
  eagerly and under ``torch.compile`` (compile time = the first call);
* the forward pass (no gradient, dropout off);
* the median step time over ``--steps`` timed steps after ``--warmup`` untimed ones, every
  step waited for (``jax.block_until_ready`` / ``torch.cuda.synchronize``);
* throughput (tokens/s or images/s), peak memory, achieved TFLOP/s and MFU under two FLOP
  conventions (each family's ``train_flops`` in ``zoo.registry``, the formula the training
  loop's MFU uses), and zoo / peer ratios.

float32 on CPU; on GPU zoo computes in bfloat16 (float32 parameters) and PyTorch runs under
``torch.autocast(bfloat16)``. Both sides get the same number of threads (``--threads``,
default: the cores this process may use).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

# The two FLOP conventions: key -> how it is written in tables.
CONVENTIONS = {
    "full": "6N+12·L·d·T",
    "causal_half": "6N+6·L·d·T (causal ½)",
}

PEER_MODES = ("eager", "compile", "timm")


# ----------------------------------------------------------------------------------------------
# What a script declares.


@dataclasses.dataclass
class ZooWork:
  """A zoo model config, the name of its task in ``zoo.training.tasks`` and one host batch."""

  config: Any
  task: str
  batch: dict[str, np.ndarray]


@dataclasses.dataclass
class TorchWork:
  """A float32 PyTorch module and its inputs; ``loss(module, inputs)`` defaults to ``.loss``."""

  model: Any
  train_inputs: dict[str, Any]
  forward_inputs: dict[str, Any]
  loss: Callable[[Any, dict[str, Any]], Any] | None = None


@dataclasses.dataclass
class Case:
  """One model at one shape, measured for zoo and every peer.

  Attributes:
    model: preset name ("gpt2-small").
    shape: human-readable shape ("B=1 T=1024").
    unit: "tokens" or "images".
    units: units per step (B*T tokens, B images; source + target tokens for seq2seq).
    flops: train FLOPs per step under each of :data:`CONVENTIONS`.
    zoo: builds the zoo side (called once, lazily).
    peers: library name ("hf", "timm") -> builder of the PyTorch side.
  """

  model: str
  shape: str
  unit: str
  units: int
  flops: dict[str, float]
  zoo: Callable[[], ZooWork]
  peers: dict[str, Callable[[], TorchWork]]


# ----------------------------------------------------------------------------------------------
# Command line and environment.


def parser(description: str) -> argparse.ArgumentParser:
  """The flags every family script takes."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--smoke", action="store_true", help="tiny shapes: seconds on a CPU (tests)")
  p.add_argument("--batch-size", type=int, default=None, help="rows per step (default: per script)")
  p.add_argument("--steps", type=int, default=None,
                 help="timed steps (default 3 on CPU, 20 on GPU, 2 smoke)")
  p.add_argument("--warmup", type=int, default=None,
                 help="extra untimed steps before timing (default 0 on CPU, 3 on GPU); the "
                 "first (compiling) train step and the one measuring peak memory always run")
  p.add_argument("--schedule", choices=("interleaved", "sequential"), default=None,
                 help="interleaved: all frameworks built, then timed round robin (default on "
                 "CPU: fair under a drifting load); sequential: one after the other (default on "
                 "GPU: one framework in device memory at a time)")
  p.add_argument(
      "--peers", default="eager,compile,timm",
      help="comma list of PyTorch variants: eager (Hugging Face), compile (Hugging Face under "
      "torch.compile), timm (ViT on GPU only); empty = zoo alone",
  )
  p.add_argument("--no-forward", action="store_true", help="time the training step only")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="compute dtype (default: bfloat16 on GPU, float32 on CPU)")
  p.add_argument("--scan-layers", action="store_true", help="zoo: nn.scan over layers")
  p.add_argument("--remat", default="none", help="zoo remat_policy (none|full|dots|...)")
  p.add_argument("--attention-impl", default=None, choices=("xla", "chunked", "cudnn"),
                 help="zoo attention implementation (default: the models' own choice, None)")
  p.add_argument("--threads", type=int, default=None,
                 help="CPU threads for PyTorch (default: all cores)")
  p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (TFLOP/s)")
  p.add_argument("--measure-peak", action="store_true",
                 help="CPU: use a timed float32 matmul as the peak for MFU")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--markdown", default=None, help="write the markdown table here")
  return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
  """Parse, fill the defaults that depend on the device, validate."""
  args = p.parse_args(argv)
  gpu = on_gpu()
  if args.steps is None:
    args.steps = 2 if args.smoke else 20 if gpu else 3
  if args.warmup is None:
    args.warmup = 3 if gpu and not args.smoke else 0
  if args.schedule is None:
    args.schedule = "sequential" if gpu else "interleaved"
  args.interleave = args.schedule == "interleaved"
  if args.dtype is None:
    args.dtype = "bfloat16" if gpu else "float32"
  if args.steps < 1 or args.warmup < 0:
    raise ValueError(f"need --steps >= 1 and --warmup >= 0; got {args.steps}, {args.warmup}.")
  if args.batch_size is not None and args.batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}.")
  peers = [m.strip() for m in args.peers.split(",") if m.strip()]
  for m in peers:
    if m not in PEER_MODES:
      raise ValueError(f"--peers takes a comma list of {PEER_MODES}; got {m!r}.")
  args.peer_modes = peers
  if args.threads is None:
    args.threads = num_cores()
  return args


def parse_ints(flag: str, text: str) -> list[int]:
  """``"128,512"`` -> ``[128, 512]``; a ValueError naming the flag otherwise."""
  try:
    values = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise ValueError(
        f"{flag} takes a comma list of positive integers (e.g. 128,512); got {text!r}."
    )
  return values


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
  if hasattr(os, "getloadavg"):
    env["load_average"] = [round(x, 2) for x in os.getloadavg()]
  return env


# ----------------------------------------------------------------------------------------------
# FLOPs.


def zoo_flops(cfg: Any, batch: dict[str, np.ndarray]) -> dict[str, float]:
  """Train FLOPs of one step on ``batch`` under both :data:`CONVENTIONS`.

  The family's own formula (``zoo.registry.family_of(cfg).train_flops``), on parameter shapes
  only: the number the training loop's MFU is computed from.
  """
  from zoo import registry  # noqa: PLC0415

  family = registry.family_of(cfg)
  args, kwargs = family.dummy_inputs(cfg)
  model = registry.build(cfg)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))["params"]
  shapes = {k: tuple(np.shape(v)) for k, v in batch.items()}
  return family.train_flops(cfg, nn.unbox(params), shapes)


# ----------------------------------------------------------------------------------------------
# Memory.


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


class HostMemory:
  """Peak host RSS of a phase, above the RSS its start (CPU runs).

  ``start()`` before the model is built, ``arm()`` once compilation is over (so compiler
  memory is not counted), ``peak()`` after the timed steps. Without ``/proc`` (not Linux) the
  process-wide ``ru_maxrss`` is reported and says so.
  """

  def start(self):
    gc.collect()
    self.base_kb = _status_kb("VmRSS")

  def arm(self):
    self.resettable = self.base_kb is not None and _reset_host_peak()

  def peak(self) -> dict[str, Any]:
    if self.resettable:
      hwm = _status_kb("VmHWM")
      return {"bytes": (hwm - self.base_kb) * 1024,
              "how": "host RSS peak during the steps, minus RSS before the model was built"}
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"bytes": kb * 1024, "how": "host ru_maxrss of the whole process"}


# ----------------------------------------------------------------------------------------------
# Timing.


def timed(fn: Callable[[], Any], warmup: int, steps: int) -> dict[str, Any]:
  """Time ``fn`` (which must wait for its own result): one untimed first call (``first_s``),
  ``warmup`` more untimed calls, then ``steps`` timed ones (median ``step_s``)."""
  first = _first(fn)
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return {"first_s": first, "times_s": times, "step_s": statistics.median(times),
          "min_s": min(times)}


def _first(fn: Callable[[], Any]) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _rates(case: Case, step_s: float, peak: float | None) -> dict[str, Any]:
  out = {"units_per_s": case.units / step_s}
  out["tflops_per_s"] = {k: f / step_s / 1e12 for k, f in case.flops.items()}
  out["mfu"] = {k: (f / step_s / peak if peak else None) for k, f in case.flops.items()}
  return out


def short_error(err: BaseException) -> str:
  lines = str(err).strip().splitlines()
  text = lines[0] if lines else ""
  return f"failed: {type(err).__name__}: {text[:200]}"


# ----------------------------------------------------------------------------------------------
# zoo.


# Updates the (constant) learning-rate schedule spans: any number above the steps run.
OPTIM_STEPS = 1_000_000
# One device: the benchmark compares one accelerator (or one CPU process) with PyTorch on it.
ONE_DEVICE_MESH = {"data": 1, "fsdp": 1, "tensor": 1}


def optim_config() -> ml_collections.ConfigDict:
  """``config.optim`` for AdamW with a constant lr: the hyper-parameters of
  ``torch.optim.AdamW`` below (lr 1e-4, betas 0.9 / 0.999, eps 1e-8, weight decay 0.01, no
  clipping)."""
  return ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-4, schedule="constant", warmup_steps=0, end_lr_ratio=0.0,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=0.0, momentum=0.0,
  ))


def _cost_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
      cost = cost[0]
    return float(cost["flops"]) if cost and "flops" in cost else None
  except Exception:  # noqa: BLE001 - an optional number; some backends do not implement it
    return None


def _xla_memory(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001 - optional, as above
    return None


def _jax_device_peak() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def compiler_options(args) -> dict[str, Any] | None:
  """Smoke runs skip LLVM's optimisations: a third of the compile time, and timings there
  mean nothing anyway. Full runs compile exactly as ``jax.jit`` does by default."""
  return {"xla_backend_optimization_level": 0} if args.smoke else None


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
  program: Any = None  # zoo: the training loop's ``loop.Program`` it belongs to
  set_mode: Callable[[str], Any] = lambda mode: None


def prepare_zoo(case: Case, args) -> Prepared:
  """Build, compile (timed) and warm up the zoo side: train step, then forward.

  The state, the step and its optimizer come from the training loop
  (``loop.program_for`` -> ``loop.program``, ``loop.init_state``), so the step timed here is
  the one ``train.py`` runs; only the mesh (one device) and the optimizer config
  (:func:`optim_config`) are the benchmark's.
  """
  from zoo.training import loop  # noqa: PLC0415
  from zoo.training import mesh as mesh_lib  # noqa: PLC0415
  from zoo.training import tasks as tasks_lib  # noqa: PLC0415

  host = HostMemory()
  host.start()
  work = case.zoo()
  task = tasks_lib.get_task(work.task)
  mesh = mesh_lib.make_mesh(ONE_DEVICE_MESH, jax.devices()[:1])
  rules = mesh_lib.rules_from_config(None)  # the default logical -> mesh rules
  prog = loop.program_for(
      work.config, task, optim_config(), num_steps=OPTIM_STEPS, mesh=mesh, rules=rules,
      compiler_options=compiler_options(args),
  )
  rng = jax.random.PRNGKey(0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    holder = {"state": loop.init_state(prog, mesh, rules, rng)}
    batch = mesh_lib.place_batch(work.batch, mesh)
    t0 = time.perf_counter()
    lowered = prog.step.lower(holder["state"], batch, rng)
    t1 = time.perf_counter()
    compiled = lowered.compile()  # with the program's compiler options
    t2 = time.perf_counter()
  losses = []

  def train_step():
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    jax.block_until_ready((holder["state"], metrics))
    losses.append(metrics["loss"])

  train = {"lower_s": t1 - t0, "compile_s": t2 - t1, "first_s": _first(train_step)}
  host.arm()
  train_step()  # the step whose peak memory is reported
  train["loss_first"] = float(losses[0])
  train["xla_flops"] = _cost_flops(compiled)
  train["xla_memory_bytes"] = _xla_memory(compiled)
  if on_gpu():
    train["memory"] = {
        "bytes": _jax_device_peak(), "how": "device peak_bytes_in_use (process-wide)"
    }
  else:
    train["memory"] = host.peak()
  prepared = Prepared({"framework": "zoo", "train": train}, train=train_step, compiled=compiled,
                      step_fn=prog.step, program=prog)
  if not args.no_forward:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      _prepare_forward(prepared, prog.model, task, holder, batch, args)
  return prepared


def _prepare_forward(prepared: Prepared, model, task, holder, batch, args) -> None:
  """The forward pass without gradient or dropout, on the current parameters (compiled under
  the caller's mesh and rules)."""
  fwd = jax.jit(lambda p, b: task.apply(model.apply, p, b, rng=None, train=False))
  t0 = time.perf_counter()
  fwd_compiled = fwd.lower(holder["state"].params, batch).compile(compiler_options(args))
  compile_s = time.perf_counter() - t0

  def forward():
    jax.block_until_ready(fwd_compiled(holder["state"].params, batch))

  prepared.result["forward"] = {"compile_s": compile_s, "first_s": _first(forward)}
  prepared.forward = forward


def _torch():
  import torch

  return torch


def torch_device():
  torch = _torch()
  return torch.device("cuda" if on_gpu() and torch.cuda.is_available() else "cpu")


def _to(x, device):
  torch = _torch()
  if isinstance(x, np.ndarray):
    if np.issubdtype(x.dtype, np.integer):
      x = x.astype(np.int64)  # PyTorch's index dtype (embeddings, cross entropy targets)
    x = torch.from_numpy(np.ascontiguousarray(x))
  return x.to(device) if isinstance(x, torch.Tensor) else x


# PLR0915 (too many statements): one linear recipe per peer mode.
def prepare_torch(case: Case, library: str, mode: str, args) -> Prepared:  # noqa: PLR0915
  """Build and warm up one PyTorch peer (``mode`` "eager" or "compile").

  The ordinary training loop: ``loss = model(**inputs, labels=...).loss; loss.backward();
  opt.step(); opt.zero_grad(set_to_none=True)``. A peer that fails (``torch.compile`` without
  a working compiler, a missing library) comes back as ``{"error": "failed: <reason>"}`` in
  ``result`` and no step functions; it never takes the run down.
  """
  torch = _torch()
  torch.set_num_threads(args.threads)
  device = torch_device()
  cuda = device.type == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  bf16 = args.dtype == "bfloat16" and cuda
  autocast = (
      (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
  )
  name = f"{library} {'torch.compile' if mode == 'compile' else 'eager'}"
  prepared = Prepared({"framework": name})
  host = HostMemory()
  host.start()
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  try:
    torch.manual_seed(0)
    work = case.peers[library]()
    model = work.model.to(device).train()
    train_in = {k: _to(v, device) for k, v in work.train_inputs.items()}
    fwd_in = {k: _to(v, device) for k, v in work.forward_inputs.items()}
    loss_fn = work.loss or (lambda m, inputs: m(**inputs).loss)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01)
    runner = torch.compile(model) if mode == "compile" else model
    losses = []

    def train_step():
      with autocast():
        loss = loss_fn(runner, train_in)
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      sync()
      losses.append(loss.detach())

    first = _first(train_step)  # torch.compile compiles here
    host.arm()
    train_step()  # the step whose peak memory is reported
    train = {"first_s": first, "loss_first": float(losses[0])}
    if mode == "compile":
      train["compile_s"] = first
    if cuda:
      train["memory"] = {"bytes": int(torch.cuda.max_memory_allocated()),
                         "how": "torch.cuda.max_memory_allocated"}
    else:
      train["memory"] = host.peak()
    prepared.result["train"] = train
    prepared.train = train_step
  except Exception as err:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
    prepared.result["error"] = short_error(err)
    return prepared

  def set_mode(which: str):
    model.train(which == "train")

  prepared.set_mode = set_mode
  if not args.no_forward:

    def forward():
      with torch.inference_mode(), autocast():
        runner(**fwd_in)
      sync()

    try:
      set_mode("forward")
      first = _first(forward)  # torch.compile compiles the eval graph here
      prepared.result["forward"] = {"first_s": first}
      if mode == "compile":
        prepared.result["forward"]["compile_s"] = first
      prepared.forward = forward
    except Exception as err:  # noqa: BLE001
      prepared.result["forward_error"] = short_error(err)
    set_mode("train")
  return prepared


def _release_torch(modes: list[str]) -> None:
  if "torch" not in sys.modules:
    return
  torch = _torch()
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
  if "compile" in modes:
    torch.compiler.reset()  # drop compiled graphs between cases


def peer_variants(case: Case, args) -> list[tuple[str, str]]:
  """``(library, mode)`` pairs to run for a case."""
  out = []
  for lib in case.peers:
    if lib == "timm":
      if "timm" in args.peer_modes and on_gpu():
        out.append(("timm", "eager"))
      continue
    for mode in ("eager", "compile"):
      if mode in args.peer_modes:
        out.append((lib, mode))
  return out


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


def _finish(case: Case, result: dict[str, Any], peak: float | None) -> dict[str, Any]:
  if "step_s" in result.get("train", {}):
    result["train"].update(_rates(case, result["train"]["step_s"], peak))
  if "step_s" in result.get("forward", {}):
    result["forward"]["units_per_s"] = case.units / result["forward"]["step_s"]
  else:
    result.pop("forward", None)
  return result


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
  """peer framework -> zoo/peer throughput: ``train`` and ``forward`` from the median steps,
  ``train_best`` and ``forward_best`` from the fastest ones (robust to a noisy machine)."""
  zoo = next((r for r in results if r["framework"] == "zoo"), None)
  out = {}
  for r in results:
    if r["framework"] == "zoo" or zoo is None:
      continue
    entry = {}
    for part in ("train", "forward"):
      z, p = zoo.get(part) or {}, r.get(part) or {}
      ok = "step_s" in z and "step_s" in p
      entry[part] = p["step_s"] / z["step_s"] if ok else None  # = zoo/peer units per second
      entry[f"{part}_best"] = p["min_s"] / z["min_s"] if ok else None  # fastest step each
    out[r["framework"]] = entry
  return out


def run_case(case: Case, args, peak: float | None) -> dict[str, Any]:
  """Measure zoo and every peer on one case; ``args.interleave`` picks the schedule."""
  variants = peer_variants(case, args)
  # Peers are built first: on a GPU PyTorch's cache is emptied before JAX allocates its pool.
  builders = [
      (f"{lib} {mode}", lambda lib=lib, mode=mode: prepare_torch(case, lib, mode, args))
      for lib, mode in variants
  ] + [("zoo", lambda: prepare_zoo(case, args))]
  results = []
  if args.interleave:
    prepared = []
    for name, build in builders:
      print(f"  {case.model} {case.shape}: preparing {name} ...", file=sys.stderr, flush=True)
      prepared.append(build())
    print(f"  {case.model} {case.shape}: timing, interleaved ...", file=sys.stderr, flush=True)
    time_steps(prepared, "train", args.steps, args.warmup)
    time_steps(prepared, "forward", args.steps, args.warmup)
    results = [_finish(case, p.result, peak) for p in prepared]
    del prepared
  else:
    for name, build in builders:
      print(f"  {case.model} {case.shape}: {name} ...", file=sys.stderr, flush=True)
      p = build()
      time_steps([p], "train", args.steps, args.warmup)
      time_steps([p], "forward", args.steps, args.warmup)
      results.append(_finish(case, p.result, peak))
      del p
      _release_torch([m for _, m in variants])
  _release_torch([m for _, m in variants])
  results.insert(0, results.pop())  # zoo first in the table
  return {
      "model": case.model,
      "shape": case.shape,
      "unit": case.unit,
      "units_per_step": case.units,
      "flops_per_step": case.flops,
      "results": results,
      "ratios": ratios(results),
  }


def run(name: str, cases: list[Case], args) -> dict[str, Any]:
  """Measure every case; print the markdown table; write ``--out`` / ``--markdown``."""
  env = environment(args)
  print(f"{name}: {env['device']}, {args.dtype}, peak {env['peak_source']}", file=sys.stderr)
  notes = []
  if any("timm" in c.peers for c in cases) and "timm" in args.peer_modes and not on_gpu():
    notes.append("timm is compared on GPU only.")
  report = {"benchmark": name, "environment": env, "notes": notes,
            "cases": [run_case(c, args, env["peak_flops"]) for c in cases]}
  if hasattr(os, "getloadavg"):
    env["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
  text = markdown(report)
  print(text)
  write_outputs(report, text, args)
  return report


def write_outputs(report: dict[str, Any], text: str, args) -> None:
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1, default=float)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(text)


# ----------------------------------------------------------------------------------------------
# Markdown.


def _num(x: float | None, digits: int = 3) -> str:
  if x is None:
    return "n/a"
  if x >= 100:
    return f"{x:,.0f}"
  return f"{x:.{digits}g}"


def _bytes(mem: dict[str, Any] | None) -> str:
  if not mem or mem.get("bytes") is None:
    return "n/a"
  return f"{mem['bytes'] / 2**30:.2f} GiB"


def _ratio(ratio: dict[str, float | None], part: str) -> str:
  if ratio.get(part) is None:
    return "n/a"
  return f"{ratio[part]:.2f}× ({ratio[f'{part}_best']:.2f}×)"


def _pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def environment_markdown(env: dict[str, Any]) -> str:
  v = env["versions"]
  lines = [
      f"- device: {env['device']} (backend {env['backend']}, {env['threads']} threads each side)",
      f"- date: {env['date']}; dtype: {env['dtype']}; per framework: compile, 2 untimed train "
      f"steps (the first; the one measuring peak memory) + {env['warmup']} warm-up, then "
      f"{env['steps']} timed steps ({env.get('schedule', 'sequential')}); median step time, "
      "min in brackets",
      "- versions: " + ", ".join(f"{k} {v[k]}" for k in v),
      f"- peak for MFU: {env['peak_source']}",
  ]
  if "load_average" in env:
    after = env.get("load_average_after")
    lines.append(
        f"- load average (1/5/15 min) at start: {env['load_average']}"
        + (f", at end: {after}" if after else "")
    )
  if env.get("smoke"):
    lines.append("- **smoke mode**: tiny shapes, numbers mean nothing")
  return "\n".join(lines)


def case_markdown(case: dict[str, Any]) -> str:
  unit = case["unit"]
  flops = case["flops_per_step"]
  head = (
      f"#### {case['model']}, {case['shape']} ({case['units_per_step']:,} {unit}/step; train "
      f"TFLOP/step {CONVENTIONS['full']}: {flops['full'] / 1e12:.3g}, "
      f"{CONVENTIONS['causal_half']}: {flops['causal_half'] / 1e12:.3g})"
  )
  cols = [
      "framework", f"train {unit}/s", "train step s (min)", f"fwd {unit}/s",
      "compile (s) train / fwd",
      "peak mem (train)", "train TFLOP/s", f"MFU {CONVENTIONS['full']}",
      f"MFU {CONVENTIONS['causal_half']}", "zoo ÷ this train (best)", "zoo ÷ this fwd (best)",
  ]
  rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in case["results"]:
    fw = r["framework"]
    if "train" not in r:
      rows.append(f"| {fw} | {r.get('error', 'failed')} |" + " |" * (len(cols) - 2))
      continue
    t, f = r["train"], r.get("forward")
    comp_t = t.get("compile_s")
    comp = f"{_num(comp_t) if comp_t is not None else '—'} / " + (
        _num(f.get("compile_s")) if f and f.get("compile_s") is not None else "—"
    )
    ratio = case["ratios"].get(fw, {})
    fwd_rate = _num(f["units_per_s"]) if f else r.get("forward_error", "—")
    rows.append("| " + " | ".join([
        fw,
        _num(t["units_per_s"]),
        f"{_num(t['step_s'])} ({_num(t['min_s'])})",
        fwd_rate,
        comp,
        _bytes(t.get("memory")),
        _num(t["tflops_per_s"]["full"]),
        _pct(t["mfu"]["full"]),
        _pct(t["mfu"]["causal_half"]),
        "—" if fw == "zoo" else _ratio(ratio, "train"),
        "—" if fw == "zoo" else _ratio(ratio, "forward"),
    ]) + " |")
  return head + "\n\n" + "\n".join(rows)


def markdown(report: dict[str, Any], with_environment: bool = True) -> str:
  parts = [f"### {report['benchmark']}"]
  if with_environment:
    parts.append(environment_markdown(report["environment"]))
  if report.get("notes"):
    parts.extend(report["notes"])
  for case in report.get("cases", []):
    parts.append(case_markdown(case))
  if report.get("table"):
    parts.append(report["table"])
  return "\n\n".join(parts) + "\n"


def zoo_overrides(args) -> dict[str, Any]:
  """Config fields every family shares, from the command line."""
  return {
      "dtype": jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
      "scan_layers": bool(args.scan_layers),
      "remat_policy": args.remat,
      "attention_impl": args.attention_impl,
  }


def rng(seed: int = 0) -> np.random.RandomState:
  return np.random.RandomState(seed)
