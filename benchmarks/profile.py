"""Where a zoo train step spends its time: one traced step, grouped by pass, module and op kind.

``python -m benchmarks.profile gpt [--smoke] [--batch-size B] [--top 15] [--out prof.json]``
(family: gpt | bert | vit | transformer, at the shapes of ``benchmarks.<family>``).

The step is the one the benchmarks time and ``train.py`` runs (``steps.train_step`` from
``zoo.training.steps.program``: loss, gradient, AdamW update), compiled once and run once
under ``jax.profiler``. Every XLA op in the trace is matched to its HLO instruction, whose
``op_name`` metadata says which module it came from and whether it belongs to the forward pass
or to the gradient (``transpose(jvp(...))``). Layers are folded together (``layers_*``), so a
row is the total over all layers. Kinds are XLA's fusion names without their number: on CPU
``ynn_fusion`` / ``dot`` are the matmuls (YNNPACK / Eigen), ``copy_*`` / ``transpose_*``
layout changes, the rest element-wise or reduction loops.
"""

from __future__ import annotations

import collections
import gzip
import importlib
import json
import os
import re
import tempfile
import time
from typing import Any

import jax

from benchmarks import cli, env, report, zoo_side

SCRIPTS = ("gpt", "bert", "vit", "transformer")  # benchmarks/<name>.py, one per family
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?op_name=\"((?:[^\"\\]|\\.)*)\"")
_LAYER = re.compile(r"layers_\d+")


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its ``op_name`` metadata (``jit(f)/jvp(GPT)/decoder/...``)."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def classify(op_name: str, depth: int = 3) -> tuple[str, str]:
  """``(pass, module)`` of one op: "forward" / "backward" / "update", and its module path with
  layer numbers folded to ``layers_*``, cut to ``depth`` components."""
  parts = op_name.split("/")[1:]  # drop jit(...)
  if not parts:
    return "other", "(no op_name)"
  head = parts[0]
  if head.startswith("transpose("):
    phase = "backward"
  elif head.startswith("jvp("):
    phase = "forward"
  else:
    phase = "update"  # optimizer, loss bookkeeping outside the differentiated function
  if phase == "update":
    return phase, "(optimizer and bookkeeping)"
  # Module names only: no nested jit(...) wrappers, einsum specs or primitive names.
  path = [q for q in parts[1:-1] if not q.startswith("jit(") and "->" not in q][:depth]
  return phase, _LAYER.sub("layers_*", "/".join(path)) or "(loss, outside the model)"


def kind(op: str) -> str:
  return re.sub(r"\.\d+$", "", op)


def _events(trace_dir: str) -> list[dict[str, Any]]:
  files = []
  for root, _, names in os.walk(trace_dir):
    files += [os.path.join(root, n) for n in names if n.endswith(".trace.json.gz")]
  if not files:
    raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}.")
  with gzip.open(max(files, key=os.path.getmtime)) as f:
    return json.load(f).get("traceEvents", [])


def profile_step(compiled, run, trace_dir: str) -> dict[str, Any]:
  """Trace one call of ``run()`` and attribute the time of every op of ``compiled``."""
  meta = op_names(compiled.as_text())
  t0 = time.perf_counter()
  jax.profiler.start_trace(trace_dir)
  try:
    run()
  finally:
    jax.profiler.stop_trace()
  wall = time.perf_counter() - t0
  groups: collections.Counter = collections.Counter()
  ops: collections.Counter = collections.Counter()
  for e in _events(trace_dir):
    if e.get("ph") != "X" or "dur" not in e:
      continue
    name = (e.get("args") or {}).get("hlo_op", e.get("name", ""))
    if name not in meta:
      continue
    phase, module = classify(meta[name])
    us = float(e["dur"])
    groups[(phase, module, kind(name))] += us
    ops[(name, meta[name])] += us
  total = sum(groups.values())
  return {
      "wall_s": wall,
      "op_s": total / 1e6,
      "groups": [
          {"pass": p, "module": m, "kind": k, "ms": us / 1e3, "share": us / total if total else 0}
          for (p, m, k), us in groups.most_common()
      ],
      "ops": [{"op": n, "op_name": o, "ms": us / 1e3} for (n, o), us in ops.most_common(50)],
  }


def by(rows: list[dict[str, Any]], key: str) -> list[tuple[str, float]]:
  totals: collections.Counter = collections.Counter()
  for r in rows:
    totals[r[key]] += r["ms"]
  return totals.most_common()


def _ms(ms: float) -> str:
  return f"{ms:,.0f}" if ms >= 10 else f"{ms:.2f}"


def markdown(title: str, prof: dict[str, Any], top: int) -> str:
  rows, total = prof["groups"], sum(r["ms"] for r in prof["groups"])
  out = [f"### {title}", "",
         f"One traced train step: {prof['wall_s']:.2f} s wall, "
         f"{prof['op_s']:.2f} s inside XLA ops.",
         "", "| pass | ms | share |", "|---|---:|---:|"]
  out += [f"| {p} | {_ms(ms)} | {ms / total:.0%} |" for p, ms in by(rows, "pass")]
  out += ["", "| op kind | ms | share |", "|---|---:|---:|"]
  out += [f"| {k} | {_ms(ms)} | {ms / total:.0%} |" for k, ms in by(rows, "kind")[:8]]
  out += ["", f"Top {top} (pass, module, kind), summed over layers:", "",
          "| pass | module | kind | ms | share |", "|---|---|---|---:|---:|"]
  out += [f"| {r['pass']} | `{r['module']}` | {r['kind']} | {_ms(r['ms'])} | {r['share']:.0%} |"
          for r in rows[:top]]
  return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
  p = cli.parser(__doc__.splitlines()[0])
  p.add_argument("family", choices=SCRIPTS)
  p.add_argument("--top", type=int, default=15, help="rows in the detailed table")
  p.add_argument("--length", type=int, default=None, help="bert: the sequence length (128)")
  args = cli.parse(p, argv)
  module = importlib.import_module(f"benchmarks.{args.family}")
  case = module.case(args, **({"length": args.length} if args.length else {}))
  args.no_forward, args.peer_modes = True, []
  prepared = zoo_side.prepare(case, args)  # compiled and already run twice
  compiled = prepared.compiled
  with tempfile.TemporaryDirectory() as trace_dir:
    prof = profile_step(compiled, prepared.train, trace_dir)
  title = f"{case.model}, {case.shape} ({env.device_name()}, {args.dtype})"
  out = {"title": title, "environment": env.environment(args), **prof}
  text = markdown(title, prof, args.top)
  print(text)
  report.write_outputs(out, text, args)
  return out


if __name__ == "__main__":
  main()
