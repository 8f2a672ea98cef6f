"""Markdown output: the environment block, one table per case, and the files ``--out`` and
``--markdown`` name."""

from __future__ import annotations

import json
from typing import Any

from benchmarks import cases


def fmt_num(x: float | None, digits: int = 3) -> str:
  if x is None:
    return "n/a"
  if x >= 100:
    return f"{x:,.0f}"
  return f"{x:.{digits}g}"


def fmt_bytes(mem: dict[str, Any] | None, key: str = "bytes") -> str:
  """``mem[key]`` in GiB (``"n/a"`` when absent)."""
  if not mem or mem.get(key) is None:
    return "n/a"
  return f"{mem[key] / 2**30:.2f} GiB"


def fmt_size(n: int | None) -> str:
  """Bytes as GiB from 1 GiB up, else MiB (the small arguments of a smoke run stay readable)."""
  if n is None:
    return "n/a"
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def xla_memory_line(case: dict[str, Any]) -> str | None:
  """The zoo train step's ``memory_analysis()`` as one line under a case table."""
  zoo = next((r for r in case["results"] if r["framework"] == "zoo"), None)
  xla = (zoo or {}).get("train", {}).get("xla_memory")
  if not xla:
    return None
  parts = ", ".join(
      f"{name} {fmt_size(xla.get(key))}" for name, key in (
          ("arguments", "argument_bytes"), ("outputs", "output_bytes"),
          ("aliased (donated)", "alias_bytes"), ("temp", "temp_bytes"),
          ("generated code", "generated_code_bytes"), ("total", "total_bytes"),
      )
  )
  return f"zoo train step, XLA `memory_analysis()`: {parts}."


def fmt_ratio(ratio: dict[str, float | None], part: str) -> str:
  """``"1.23× (1.10×)"``: zoo ÷ peer of the median steps, and of the fastest in brackets."""
  if ratio.get(part) is None:
    return "n/a"
  return f"{ratio[part]:.2f}× ({ratio[f'{part}_best']:.2f}×)"


def fmt_pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def short_error(err: BaseException) -> str:
  """How a failure is written in a table cell: its type and the first line of its message."""
  lines = str(err).strip().splitlines()
  text = lines[0] if lines else ""
  return f"failed: {type(err).__name__}: {text[:200]}"


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
  if env.get("backend") == "cpu":
    lines.append(
        "- peak memory: host RSS above each framework's RSS before its build (after gc + "
        "malloc_trim), the same for every framework: *build + compile* = the peak up to the end "
        "of the first train step (zoo: init, lower + compile, first step; PyTorch: first step, "
        "AdamW state, torch.compile's compile); *steps* = the peak of one later step"
    )
  if "load_average" in env:
    after = env.get("load_average_after")
    lines.append(
        f"- load average (1/5/15 min) at start: {env['load_average']}"
        + (f", at end: {after}" if after else "")
    )
  if env.get("smoke"):
    lines.append("- **smoke mode**: tiny shapes, numbers mean nothing")
  return "\n".join(lines)


def _case_row(r: dict[str, Any], ratio: dict[str, float | None], width: int) -> str:
  """One framework's row of a case table (``width`` columns)."""
  fw = r["framework"]
  if "train" not in r:
    return f"| {fw} | {r.get('error', 'failed')} |" + " |" * (width - 2)
  t, f = r["train"], r.get("forward")
  comp_t = t.get("compile_s")
  comp = f"{fmt_num(comp_t) if comp_t is not None else '—'} / " + (
      fmt_num(f.get("compile_s")) if f and f.get("compile_s") is not None else "—"
  )
  fwd_rate = fmt_num(f["units_per_s"]) if f else r.get("forward_error", "—")
  return "| " + " | ".join([
      fw,
      fmt_num(t["units_per_s"]),
      f"{fmt_num(t['step_s'])} ({fmt_num(t['min_s'])})",
      fwd_rate,
      comp,
      fmt_bytes(t.get("memory"), "compile_peak_bytes"),
      fmt_bytes(t.get("memory")),
      fmt_num(t["tflops_per_s"]["full"]),
      fmt_pct(t["mfu"]["full"]),
      fmt_pct(t["mfu"]["causal_half"]),
      "—" if fw == "zoo" else fmt_ratio(ratio, "train"),
      "—" if fw == "zoo" else fmt_ratio(ratio, "forward"),
  ]) + " |"


def case_markdown(case: dict[str, Any]) -> str:
  """A case's heading (units and FLOPs per step) and its table, zoo first."""
  unit = case["unit"]
  flops = case["flops_per_step"]
  head = (
      f"#### {case['model']}, {case['shape']} ({case['units_per_step']:,} {unit}/step; train "
      f"TFLOP/step {cases.CONVENTIONS['full']}: {flops['full'] / 1e12:.3g}, "
      f"{cases.CONVENTIONS['causal_half']}: {flops['causal_half'] / 1e12:.3g})"
  )
  cols = [
      "framework", f"train {unit}/s", "train step s (min)", f"fwd {unit}/s",
      "compile (s) train / fwd", "peak mem build + compile", "peak mem steps",
      "train TFLOP/s", f"MFU {cases.CONVENTIONS['full']}",
      f"MFU {cases.CONVENTIONS['causal_half']}", "zoo ÷ this train (best)", "zoo ÷ this fwd (best)",
  ]
  rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in case["results"]:
    rows.append(_case_row(r, case["ratios"].get(r["framework"], {}), len(cols)))
  line = xla_memory_line(case)
  return head + "\n\n" + "\n".join(rows) + (f"\n\n{line}" if line else "")


def markdown(report: dict[str, Any], with_environment: bool = True) -> str:
  """A script's whole report: title, environment, notes, case tables, any extra table."""
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


def write_outputs(report: dict[str, Any], text: str, args) -> None:
  """The report as JSON to ``--out`` and its markdown to ``--markdown``, where given."""
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1, default=float)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(text)
