"""Running a family script's cases: zoo and every peer in one process, timed, compared, printed.

A script describes cases (``benchmarks.cases``); :func:`run` measures zoo and every peer in
the same process, one after the other, and reports for each:

* the training step: loss, backward, AdamW update (lr 1e-4, weight decay 0.01, no clipping on
  both sides). zoo: the training loop's own step, ``zoo.training.steps.program(...).step``
  (``steps.train_step`` jitted with the state donated, what ``train.py`` runs) on a one-device
  mesh, lowered and compiled ahead of time (compile time = lower + compile; ``zoo_side``);
  PyTorch: the ordinary loop
  ``model(**inputs, labels=...).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)``,
  eagerly and under ``torch.compile`` (compile time = the first call; ``torch_side``);
* the forward pass (no gradient, dropout off);
* the median step time over ``--steps`` timed steps after ``--warmup`` untimed ones, every
  step waited for (``jax.block_until_ready`` / ``torch.cuda.synchronize``; ``timing``);
* throughput (tokens/s or images/s), peak memory, achieved TFLOP/s and MFU under two FLOP
  conventions (each family's ``train_flops`` in ``zoo.registry``, the formula the training
  loop's MFU uses), and zoo / peer ratios.

float32 on CPU; on GPU zoo computes in bfloat16 (float32 parameters) and PyTorch runs under
``torch.autocast(bfloat16)``. Both sides get the same number of threads (``--threads``,
default: the cores this process may use).
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks import cases, env, report, timing, torch_side, zoo_side


def peer_variants(case: cases.Case, args) -> list[tuple[str, str]]:
  """``(library, mode)`` pairs to run for a case."""
  out = []
  for lib in case.peers:
    if lib == "timm":
      if "timm" in args.peer_modes and env.on_gpu():
        out.append(("timm", "eager"))
      continue
    for mode in ("eager", "compile"):
      if mode in args.peer_modes:
        out.append((lib, mode))
  return out


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


def _finish(case: cases.Case, result: dict[str, Any], peak: float | None) -> dict[str, Any]:
  if "step_s" in result.get("train", {}):
    result["train"].update(timing.rates(case, result["train"]["step_s"], peak))
  if "step_s" in result.get("forward", {}):
    result["forward"]["units_per_s"] = case.units / result["forward"]["step_s"]
  else:
    result.pop("forward", None)
  return result


def _say(case: cases.Case, what: str) -> None:
  print(f"  {case.model} {case.shape}: {what}", file=sys.stderr, flush=True)


def run_case(case: cases.Case, args, peak: float | None) -> dict[str, Any]:
  """Measure zoo and every peer on one case; ``args.interleave`` picks the schedule."""
  variants = peer_variants(case, args)
  modes = [m for _, m in variants]
  # Peers are built first: on a GPU PyTorch's cache is emptied before JAX allocates its pool.
  builders = [
      (f"{lib} {mode}", lambda lib=lib, mode=mode: torch_side.prepare(case, lib, mode, args))
      for lib, mode in variants
  ] + [("zoo", lambda: zoo_side.prepare(case, args))]
  results = []
  if args.interleave:
    prepared = []
    for name, build in builders:
      _say(case, f"preparing {name} ...")
      prepared.append(build())
    _say(case, "timing, interleaved ...")
    timing.time_steps(prepared, "train", args.steps, args.warmup)
    timing.time_steps(prepared, "forward", args.steps, args.warmup)
    results = [_finish(case, p.result, peak) for p in prepared]
    del prepared
  else:
    for name, build in builders:
      _say(case, f"{name} ...")
      p = build()
      timing.time_steps([p], "train", args.steps, args.warmup)
      timing.time_steps([p], "forward", args.steps, args.warmup)
      results.append(_finish(case, p.result, peak))
      del p
      torch_side.release(modes)
  torch_side.release(modes)
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


def run(name: str, case_list: list[cases.Case], args) -> dict[str, Any]:
  """Measure every case; print the markdown table; write ``--out`` / ``--markdown``."""
  environment = env.environment(args)
  print(f"{name}: {environment['device']}, {args.dtype}, peak {environment['peak_source']}",
        file=sys.stderr)
  notes = []
  if (any("timm" in c.peers for c in case_list) and "timm" in args.peer_modes
      and not env.on_gpu()):
    notes.append("timm is compared on GPU only.")
  out = {"benchmark": name, "environment": environment, "notes": notes,
         "cases": [run_case(c, args, environment["peak_flops"]) for c in case_list]}
  load = env.load_average()
  if load is not None:
    environment["load_average_after"] = load
  text = report.markdown(out)
  print(text)
  report.write_outputs(out, text, args)
  return out
