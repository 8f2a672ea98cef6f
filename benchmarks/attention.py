"""Attention backends: ``dot_product_attention`` with implementation "xla", "chunked", "cudnn".

``python -m benchmarks.attention [--lengths 512,1024,...] [--implementations xla,chunked]
[--chunk-size 512] [--smoke] [--out attention.json]``. Causal self-attention, 12 heads of 64
(GPT-2 small's), the batch sized to keep B*T constant; forward, and forward + backward
(gradients of q, k, v). cuDNN flash attention needs an NVIDIA GPU and bf16/fp16 inputs: on a
CPU it is left out, and the table says so. "chunked" is the blockwise path (causal key blocks
skipped); the "xla ÷ this" column is the crossover that ``attention.CHUNKED_MIN_LENGTH`` is set
from.

FLOPs: 4·B·N·T²·H forward (q.k and weights.v) and 3x that forward + backward, printed in full
and with the causal half (what a causal kernel actually has to do).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import cli, env, report, timing, zoo_side
from zoo.layers import attention as attn
from zoo.layers import masks

HEADS, HEAD_DIM = 12, 64


def lengths_for(args) -> list[int]:
  if args.lengths:
    return cli.parse_ints("--lengths", args.lengths)
  if args.smoke:
    return [16, 32]
  return [512, 1024, 2048, 4096, 8192] if env.on_gpu() else [256, 512, 1024, 2048, 4096]


def batch_for(args, length: int) -> int:
  if args.batch_size:
    return args.batch_size
  if args.smoke:
    return 2
  tokens = 16384 if env.on_gpu() else 1024
  return max(tokens // length, 1)


def implementations_for(args) -> tuple[list[str], list[str]]:
  """``(implementations to time, notes)``: default xla and chunked, and cudnn on a GPU."""
  wanted = args.implementations.split(",") if args.implementations else ["xla", "chunked", "cudnn"]
  for impl in wanted:
    if impl not in attn.IMPLEMENTATIONS:
      raise ValueError(
          f"--implementations takes a comma list of {attn.IMPLEMENTATIONS}; got {impl!r}."
      )
  if env.on_gpu() or "cudnn" not in wanted:
    return wanted, []
  return [i for i in wanted if i != "cudnn"], [
      "cuDNN flash attention needs an NVIDIA GPU: not timed."
  ]


def measure(impl: str, b: int, t: int, dtype, args) -> dict[str, Any]:
  key = jax.random.PRNGKey(t)
  q, k, v = (
      jax.random.normal(kk, (b, t, HEADS, HEAD_DIM), dtype) for kk in jax.random.split(key, 3)
  )
  mask = masks.causal_mask(t)

  def fwd(q, k, v):
    return attn.dot_product_attention(q, k, v, mask=mask, implementation=impl,
                                      chunk_size=args.chunk_size if impl == "chunked" else None)

  def loss(q, k, v):
    return jnp.sum(fwd(q, k, v).astype(jnp.float32))

  out: dict[str, Any] = {"implementation": impl, "batch": b, "length": t}
  flops_fwd = 4.0 * b * HEADS * t * t * HEAD_DIM
  for name, fn, flops in (
      ("forward", jax.jit(fwd), flops_fwd),
      ("forward_backward", jax.jit(jax.grad(loss, argnums=(0, 1, 2))), 3 * flops_fwd),
  ):
    t0 = time.perf_counter()
    compiled = fn.lower(q, k, v).compile(zoo_side.compiler_options(args))
    compile_s = time.perf_counter() - t0
    steps = timing.timed(
        lambda c=compiled: jax.block_until_ready(c(q, k, v)), args.warmup, args.steps
    )
    out[name] = {
        "step_s": steps["step_s"],
        "times_s": steps["times_s"],
        "compile_s": compile_s,
        "tokens_per_s": b * t / steps["step_s"],
        "tflops_per_s": {"full": flops / steps["step_s"] / 1e12,
                         "causal_half": flops / 2 / steps["step_s"] / 1e12},
    }
  return out


def table(rows: list[dict[str, Any]]) -> str:
  cols = ["T", "B", "implementation", "fwd (ms)", "fwd+bwd (ms)", "fwd+bwd tokens/s",
          "fwd+bwd TFLOP/s (full / causal ½)", "xla ÷ this (fwd+bwd time)"]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  xla = {r["length"]: r for r in rows if r["implementation"] == "xla" and "forward" in r}
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['length']} | {r['batch']} | {r['implementation']} | {r['error']} |"
                   + " |" * (len(cols) - 4))
      continue
    fb = r["forward_backward"]
    ref = xla.get(r["length"])
    speedup = "—" if r["implementation"] == "xla" or not ref else (
        f"{ref['forward_backward']['step_s'] / fb['step_s']:.2f}×")
    lines.append("| " + " | ".join([
        str(r["length"]), str(r["batch"]), r["implementation"],
        f"{1e3 * r['forward']['step_s']:.3g}", f"{1e3 * fb['step_s']:.3g}",
        f"{fb['tokens_per_s']:,.0f}",
        f"{fb['tflops_per_s']['full']:.3g} / {fb['tflops_per_s']['causal_half']:.3g}",
        speedup,
    ]) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
  p = cli.parser(__doc__.splitlines()[0])
  p.add_argument("--lengths", default=None, help="comma list of sequence lengths")
  p.add_argument("--implementations", default=None,
                 help="comma list (default: xla,chunked; plus cudnn on GPU)")
  p.add_argument("--chunk-size", type=int, default=None,
                 help="block length of the chunked path (default attention.CHUNK_SIZE)")
  args = cli.parse(p, argv)
  environment = env.environment(args)
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  impls, notes = implementations_for(args)
  print(f"attention: {environment['device']}, {args.dtype}", file=sys.stderr)
  for note in notes:
    print(note, file=sys.stderr)
  rows = []
  for t in lengths_for(args):
    b = batch_for(args, t)
    for impl in impls:
      print(f"  T={t} B={b}: {impl} ...", file=sys.stderr, flush=True)
      try:
        rows.append(measure(impl, b, t, dtype, args))
      except Exception as err:  # noqa: BLE001 - e.g. cuDNN refusing a shape: report it
        rows.append(
            {"implementation": impl, "batch": b, "length": t, "error": report.short_error(err)}
        )
  load = env.load_average()
  if load is not None:
    environment["load_average_after"] = load
  out = {
      "benchmark": f"Attention backends (causal, {HEADS} heads x {HEAD_DIM}, {args.dtype}, "
                   f"chunk {args.chunk_size or attn.CHUNK_SIZE})",
      "environment": environment,
      "notes": notes,
      "attention": rows,
      "table": table(rows),
  }
  text = report.markdown(out)
  print(text)
  report.write_outputs(out, text, args)
  return out


if __name__ == "__main__":
  main()
