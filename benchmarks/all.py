"""Every benchmark, one table: ``python -m benchmarks.all --out results.json --markdown TABLE.md``.

Each script runs in its own process (so device memory peaks and compiled-graph caches do not
leak from one family into the next), writes its JSON, and this script merges them: one
environment block, a summary of zoo / peer ratios, then every family's table. Flags it does
not know (``--peers``, ``--steps``, ``--peak-tflops``, ``--dtype`` ...) go to every script;
``--smoke`` runs the tiny shapes; ``--only gpt,vit`` runs a subset; ``--in-process`` calls the
scripts' ``main`` in this process instead (what the tests do: one set of imports).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from benchmarks import report

SCRIPTS = ("gpt", "llama", "bert", "vit", "transformer", "t5", "attention")


def run_script(name: str, extra: list[str], in_process: bool, workdir: str) -> dict[str, Any]:
  out = os.path.join(workdir, f"{name}.json")
  argv = [*extra, "--out", out]
  if in_process:
    return importlib.import_module(f"benchmarks.{name}").main(argv)
  cmd = [sys.executable, "-m", f"benchmarks.{name}", *argv]
  print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
  proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
  if proc.returncode != 0 or not os.path.exists(out):
    return {"benchmark": name, "error": f"failed: exit code {proc.returncode}"}
  with open(out) as f:
    return json.load(f)


def summary(reports: list[dict[str, Any]]) -> str:
  """One row per case: zoo's throughput and its ratio to every peer, train and forward; the
  ratio of median steps, and in brackets of the fastest steps."""
  peers: list[str] = []
  for rep in reports:
    for case in rep.get("cases", []):
      for r in case["results"]:
        if r["framework"] != "zoo" and r["framework"] not in peers:
          peers.append(r["framework"])
  cols = ["model", "shape", "zoo train /s", "zoo fwd /s"] + [
      f"zoo ÷ {p}: train (best) / fwd (best)" for p in peers
  ]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for rep in reports:
    for case in rep.get("cases", []):
      zoo = case["results"][0]
      row = [case["model"], case["shape"],
             f"{report.fmt_num(zoo['train']['units_per_s'])} {case['unit']}",
             report.fmt_num(zoo["forward"]["units_per_s"]) if "forward" in zoo else "—"]
      for p in peers:
        ratio = case["ratios"].get(p)
        if ratio is None:
          entry = next((r for r in case["results"] if r["framework"] == p), None)
          row.append(entry.get("error", "—") if entry else "—")
        else:
          row.append(f"{report.fmt_ratio(ratio, 'train')} / {report.fmt_ratio(ratio, 'forward')}")
      lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def memory_summary(reports: list[dict[str, Any]]) -> str:
  """One row per case: every framework's peak memory, *build + compile* / *steps* (the two
  windows of ``timing.HostMemory`` on CPU), and zoo's XLA temp of the train step."""
  names: list[str] = []
  for rep in reports:
    for case in rep.get("cases", []):
      for r in case["results"]:
        if r["framework"] not in names:
          names.append(r["framework"])
  cols = ["model", "shape"] + [f"{n}: build + compile / steps" for n in names] + ["zoo XLA temp"]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for rep in reports:
    for case in rep.get("cases", []):
      by_name = {r["framework"]: r.get("train", {}).get("memory") for r in case["results"]}
      row = [case["model"], case["shape"]]
      for n in names:
        mem = by_name.get(n)
        row.append(f"{report.fmt_bytes(mem, 'compile_peak_bytes')} / {report.fmt_bytes(mem)}"
                   if mem else "—")
      xla = case["results"][0].get("train", {}).get("xla_memory")
      row.append(report.fmt_size(xla["temp_bytes"]) if xla else "—")
      lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def merge(reports: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
  """``(combined JSON, markdown)`` from the scripts' reports."""
  env = next((r["environment"] for r in reports if "environment" in r), None)
  combined = {"environment": env, "benchmarks": reports}
  parts = ["## Results"]
  if env:
    parts.append(report.environment_markdown(env))
  parts.append("### Summary: zoo ÷ peer throughput (higher = zoo faster)\n\n" + summary(reports))
  parts.append("### Summary: peak memory (lower = less)\n\n" + memory_summary(reports))
  for rep in reports:
    if "error" in rep:
      parts.append(f"### {rep['benchmark']}\n\n{rep['error']}")
    else:
      parts.append(report.markdown(rep, with_environment=False).rstrip())
  return combined, "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--only", default=",".join(SCRIPTS), help=f"comma list of {SCRIPTS}")
  p.add_argument("--out", default=None, help="combined JSON")
  p.add_argument("--markdown", default=None, help="combined markdown tables")
  p.add_argument("--in-process", action="store_true", help="run the scripts in this process")
  args, extra = p.parse_known_args(argv)
  names = [n.strip() for n in args.only.split(",") if n.strip()]
  for n in names:
    if n not in SCRIPTS:
      raise ValueError(f"--only takes a comma list of {SCRIPTS}; got {n!r}.")
  with tempfile.TemporaryDirectory() as workdir:
    reports = [run_script(n, extra, args.in_process, workdir) for n in names]
  combined, text = merge(reports)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(combined, f, indent=1, default=float)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(text)
  return combined


if __name__ == "__main__":
  main()
