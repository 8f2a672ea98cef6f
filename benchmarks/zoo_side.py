"""The zoo side of a case: the training loop's own step, compiled ahead of time and warmed up.

The state, the step and its optimizer come from the training loop
(``steps.program_for`` -> ``steps.program``, ``steps.init_state`` in ``zoo.training``): the step
timed here is ``steps.train_step`` jitted with the state donated, the one ``train.py`` runs,
for the task the training loop finds by name (:func:`get_task`). Only the mesh
(one device, :data:`ONE_DEVICE_MESH`) and the optimizer config (:func:`optim_config`, the
hyper-parameters of the PyTorch side's ``torch.optim.AdamW``) are the benchmark's.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import ml_collections
from flax import linen as nn

from benchmarks import cases, env, timing

# Updates the (constant) learning-rate schedule spans: any number above the steps run.
OPTIM_STEPS = 1_000_000
# One device: the benchmark compares one accelerator (or one CPU process) with PyTorch on it.
ONE_DEVICE_MESH = {"data": 1, "fsdp": 1, "tensor": 1}


def optim_config() -> ml_collections.ConfigDict:
  """``config.optim`` for AdamW with a constant lr: the hyper-parameters of
  ``torch.optim.AdamW`` on the PyTorch side (lr 1e-4, betas 0.9 / 0.999, eps 1e-8, weight
  decay 0.01, no clipping)."""
  return ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-4, schedule="constant", warmup_steps=0, end_lr_ratio=0.0,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=0.0, momentum=0.0,
  ))


def compiler_options(args) -> dict[str, Any] | None:
  """Smoke runs skip LLVM's optimisations: they compile faster, and timings there mean
  nothing anyway. Full runs compile exactly as ``jax.jit`` does by default."""
  return {"xla_backend_optimization_level": 0} if args.smoke else None


def get_task(name: str):
  """The registered task called ``name``, as the training loop gets it (the one place the
  benchmarks ask for a task)."""
  from zoo import registry  # noqa: PLC0415

  return registry.task(name)


def _cost_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
      cost = cost[0]
    return float(cost["flops"]) if cost and "flops" in cost else None
  except Exception:  # noqa: BLE001 - an optional number; some backends do not implement it
    return None


# ``CompiledMemoryStats`` fields reported, as ``<name>_bytes``.
XLA_MEMORY_FIELDS = ("argument", "output", "alias", "temp", "generated_code")


def xla_memory(compiled) -> dict[str, int] | None:
  """``compiled.memory_analysis()`` as bytes: arguments, outputs, aliased (donated: counted in
  both), temporaries, generated code, and ``total_bytes`` = arguments + outputs + temp - alias,
  the buffers XLA allocates while the step runs. None where the backend has no analysis."""
  try:
    m = compiled.memory_analysis()
    out = {f"{k}_bytes": int(getattr(m, f"{k}_size_in_bytes")) for k in XLA_MEMORY_FIELDS}
  except Exception:  # noqa: BLE001 - optional, as above
    return None
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                        - out["alias_bytes"])
  return out


def _device_peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def prepare(case: cases.Case, args) -> timing.Prepared:
  """Build, compile (timed) and warm up the zoo side: train step, then forward.

  Compile time is ``lower`` + ``compile`` of the program's step, with the program's compiler
  options; the peak memory is that of the second step (device peak on a GPU, host RSS above
  the start on a CPU).
  """
  from zoo.training import mesh as mesh_lib  # noqa: PLC0415
  from zoo.training import steps  # noqa: PLC0415

  host = timing.HostMemory()
  host.start()
  work = case.zoo()
  task = get_task(work.task)
  mesh = mesh_lib.make_mesh(ONE_DEVICE_MESH, jax.devices()[:1])
  rules = mesh_lib.rules_from_config(None)  # the default logical -> mesh rules
  prog = steps.program_for(
      work.config, task, optim_config(), num_steps=OPTIM_STEPS, mesh=mesh, rules=rules,
      compiler_options=compiler_options(args),
  )
  rng = jax.random.PRNGKey(0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    holder = {"state": jax.block_until_ready(steps.init_state(prog, mesh, rules, rng))}
    host.built()
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

  train = {"lower_s": t1 - t0, "compile_s": t2 - t1, "first_s": timing.first_call(train_step)}
  host.arm()
  train_step()  # the step whose peak memory is reported
  train["loss_first"] = float(losses[0])
  train["xla_flops"] = _cost_flops(compiled)
  train["xla_memory"] = xla_memory(compiled)
  if env.on_gpu():
    train["memory"] = {
        "bytes": _device_peak_bytes(), "how": "device peak_bytes_in_use (process-wide)"
    }
  else:
    train["memory"] = host.peak()
  prepared = timing.Prepared({"framework": "zoo", "train": train}, train=train_step,
                             compiled=compiled, step_fn=prog.step, program=prog)
  if not args.no_forward:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      _prepare_forward(prepared, prog.model, task, holder, batch, args)
  return prepared


def _prepare_forward(prepared: timing.Prepared, model, task, holder, batch, args) -> None:
  """The forward pass without gradient or dropout, on the current parameters (compiled under
  the caller's mesh and rules)."""
  # The full logits, as inference computes them: with the fused loss on, the task would hand
  # back the head's input and XLA would drop the output matmul from a forward-only program.
  full = dataclasses.replace(task, fused_loss=False)
  fwd = jax.jit(lambda p, b: full.apply(model.apply, p, b, rng=None, train=False))
  t0 = time.perf_counter()
  fwd_compiled = fwd.lower(holder["state"].params, batch).compile(compiler_options(args))
  compile_s = time.perf_counter() - t0

  def forward():
    jax.block_until_ready(fwd_compiled(holder["state"].params, batch))

  prepared.result["forward"] = {"compile_s": compile_s, "first_s": timing.first_call(forward)}
  prepared.forward = forward
