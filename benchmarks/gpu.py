"""The GPU session in one command: attention parity, then every train-step benchmark, in bf16.

``benchmarks/gpu.sh [--out-dir gpu-results] [--dry-run] [--only parity,attention,gpt,bert,vit]``
(``python -m benchmarks.gpu`` with the same flags). On one H200 it is sized to finish in under
8 minutes; each section runs in its own process with a time limit, and a section that fails or
runs out of time is reported as such without taking the others down. Sections:

* ``parity``: ``dot_product_attention`` "cudnn", "xla" and "chunked" on the same bf16 q, k, v
  (GPT-2's 12 heads x 64, T=1024), causal and padded masks: the largest difference of the
  output and of dq, dk, dv from a float32 "xla" reference on the same bf16-rounded inputs,
  relative to that reference's largest magnitude (padded query rows are left out: the
  implementations may give them different values, and they carry no gradient);
* ``attention``: the three implementations timed at T = 1024 ... 8192 (``benchmarks.attention``);
* ``gpt``: GPT-2 124M, T=1024, batch 32, beside Hugging Face with SDPA attention, eagerly and
  under ``torch.compile`` (``benchmarks.gpt``): tokens/s, MFU in both FLOP conventions, compile
  time, peak device memory;
* ``bert``: BERT-base pretraining heads at T=128 and 512, train step only (``benchmarks.bert``);
* ``vit``: ViT-B/16 at 224 px beside Hugging Face and timm, train step only (``benchmarks.vit``).

Writes ``<out-dir>/<section>.json``, ``results.json`` (everything) and ``results.md`` (the
tables, ready for BENCHMARKS.md). ``--dry-run``: tiny shapes on the CPU, every section in this
process, seconds (what tests/test_benchmarks.py runs). Nothing here imports tensorflow-datasets
or grain (the GPU image has neither): ``--dry-run`` checks it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any

SECTIONS = ("parity", "attention", "gpt", "bert", "vit")
# Modules that must not be imported (absent from the GPU image).
FORBIDDEN = ("tensorflow_datasets", "grain")
# Seconds each section may take on the GPU (8 minutes in all, with a margin for start-up).
LIMITS = {"parity": 40, "attention": 45, "gpt": 140, "bert": 110, "vit": 100}
# The flags of each benchmark script: the GPU run and the dry run.
FLAGS = {
    "attention": (["--lengths", "1024,4096,8192", "--steps", "10"],
                  ["--smoke", "--lengths", "32", "--steps", "1"]),
    "gpt": (["--batch-size", "32", "--peers", "eager,compile", "--steps", "10"],
            ["--smoke", "--peers", "eager", "--steps", "1", "--no-forward"]),
    "bert": (["--peers", "eager,compile", "--steps", "10", "--no-forward"],
             ["--smoke", "--peers", "eager", "--steps", "1", "--no-forward", "--lengths", "16"]),
    "vit": (["--peers", "eager,compile,timm", "--steps", "10", "--no-forward"],
            ["--smoke", "--peers", "eager", "--steps", "1", "--no-forward"]),
}


# ----------------------------------------------------------------------------------------------
# Attention parity.


def parity(dry_run: bool) -> dict[str, Any]:
  """Max relative difference of each implementation (bf16) from float32 xla, output and grads."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks import env, report
  from zoo.layers import attention as attn
  from zoo.layers import masks

  b, t, n, h = (2, 32, 4, 16) if dry_run else (4, 1024, 12, 64)
  impls = ["xla", "chunked"] + (["cudnn"] if env.on_gpu() else [])
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v = (jax.random.normal(kk, (b, t, n, h), jnp.float32).astype(jnp.bfloat16)
             for kk in keys[:3])
  w = jax.random.normal(keys[3], (b, t, n, h), jnp.float32)  # a cotangent reaching everything
  lengths = jnp.array([t] + [t * 3 // 4] * (b - 1))
  valid = masks.valid_from_lengths(lengths, t)
  cases = {"causal": masks.causal_mask(t), "padding": masks.padding_mask(valid)}
  rows = []
  for mask_name, mask in cases.items():
    row_w = w * valid[:, :, None, None] if mask_name == "padding" else w

    def loss(q, k, v, impl, mask=mask, row_w=row_w):
      out = attn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
      return jnp.sum(out.astype(jnp.float32) * row_w), out

    def run(impl, dtype, loss=loss):
      fn = jax.jit(jax.value_and_grad(lambda *a: loss(*a, impl), (0, 1, 2), has_aux=True))
      (_, out), grads = fn(*(x.astype(dtype) for x in (q, k, v)))
      return [np.asarray(x, np.float32) for x in (out, *grads)]

    ref = run("xla", jnp.float32)
    keep = np.asarray(valid)[:, :, None, None] if mask_name == "padding" else True
    for impl in impls:
      try:
        got = run(impl, jnp.bfloat16)
      except Exception as err:  # noqa: BLE001 - a refused shape is a result, not a crash
        rows.append({"mask": mask_name, "implementation": impl, "error": report.short_error(err)})
        continue
      entry = {"mask": mask_name, "implementation": impl}
      for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        sel = keep if name == "out" else True
        diff = np.abs(np.where(sel, g - r, 0.0)).max()
        entry[name] = {"max_abs": float(diff), "relative": float(diff / np.abs(r).max()),
                       "finite": bool(np.isfinite(np.where(sel, g, 0.0)).all())}
      rows.append(entry)
  return {"benchmark": "attention parity", "shape": {"B": b, "T": t, "N": n, "H": h},
          "dtype": "bfloat16 vs a float32 xla reference", "rows": rows,
          "table": parity_table(rows)}


def parity_table(rows: list[dict[str, Any]]) -> str:
  cols = ["mask", "implementation", "out", "dq", "dk", "dv"]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['mask']} | {r['implementation']} | {r['error']} | | | |")
      continue
    cells = [f"{r[k]['relative']:.2e}" + ("" if r[k]["finite"] else " (non-finite)")
             for k in cols[2:]]
    lines.append("| " + " | ".join([r["mask"], r["implementation"], *cells]) + " |")
  return ("Largest |bf16 - float32 xla| / largest |float32 xla| (output: valid query rows).\n\n"
          + "\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Running the sections.


def run_section(name: str, out_dir: str, dry_run: bool) -> dict[str, Any]:
  """One section's report; a failure or a timeout becomes ``{"error": ...}``."""
  path = os.path.join(out_dir, f"{name}.json")
  if dry_run:  # in this process: one set of imports, seconds
    if name == "parity":
      report = parity(True)
    else:
      report = importlib.import_module(f"benchmarks.{name}").main([*FLAGS[name][1], "--out", path])
    with open(path, "w") as f:
      json.dump(report, f, indent=1, default=float)
    return report
  cmd = [sys.executable, "-m", "benchmarks.gpu", "--section", name, "--out-dir", out_dir]
  if name != "parity":
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *FLAGS[name][0], "--out", path]
  print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, timeout=LIMITS[name], check=False)
    error = None if proc.returncode == 0 else f"failed: exit code {proc.returncode}"
  except subprocess.TimeoutExpired:
    error = f"failed: over its {LIMITS[name]} s limit"
  print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
  if error or not os.path.exists(path):
    return {"benchmark": name, "error": error or "failed: no output"}
  with open(path) as f:
    return json.load(f)


def markdown(reports: dict[str, dict[str, Any]], wall_s: float) -> str:
  from benchmarks import all as bench_all

  parts = []
  if "parity" in reports:
    rep = reports["parity"]
    parts.append("### Attention parity (bf16)\n\n" + rep.get("table", rep.get("error", "")))
  families = [reports[n] for n in SECTIONS if n != "parity" and n in reports]
  if families:
    parts.append(bench_all.merge(families)[1])
  parts.append(f"Whole run: {wall_s:.0f} s.")
  return "\n\n".join(parts) + "\n"


def forbidden_imports() -> list[str]:
  return [m for m in FORBIDDEN if sys.modules.get(m) is not None]


def main(argv: list[str] | None = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out-dir", default="gpu-results")
  p.add_argument("--dry-run", action="store_true", help="tiny shapes, CPU, in one process")
  p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
  p.add_argument("--section", default=None, help=argparse.SUPPRESS)  # one section (a child)
  args = p.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  if args.section == "parity":
    report = parity(False)
    with open(os.path.join(args.out_dir, "parity.json"), "w") as f:
      json.dump(report, f, indent=1, default=float)
    return report
  if args.dry_run:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  names = [n.strip() for n in args.only.split(",") if n.strip()]
  for n in names:
    if n not in SECTIONS:
      raise ValueError(f"--only takes a comma list of {SECTIONS}; got {n!r}.")
  t0 = time.perf_counter()
  reports = {n: run_section(n, args.out_dir, args.dry_run) for n in names}
  wall = time.perf_counter() - t0
  text = markdown(reports, wall)
  combined = {"sections": reports, "wall_s": wall, "dry_run": args.dry_run,
              "forbidden_imports": forbidden_imports()}
  with open(os.path.join(args.out_dir, "results.json"), "w") as f:
    json.dump(combined, f, indent=1, default=float)
  with open(os.path.join(args.out_dir, "results.md"), "w") as f:
    f.write(text)
  print(text)
  if combined["forbidden_imports"]:
    raise SystemExit(f"imported {combined['forbidden_imports']}: the GPU image lacks them.")
  return combined


if __name__ == "__main__":
  main()
