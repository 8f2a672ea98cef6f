"""``python -m zoo.analysis <what> [--out DIR] ...``: see :mod:`zoo.analysis`."""

from __future__ import annotations

import argparse
import importlib
import sys

from zoo.analysis.common import AnalysisError

COMMANDS = {
    "scaling": ("zoo.analysis.scaling", "why attention divides by sqrt(d)"),
    "positions": ("zoo.analysis.positions", "sinusoidal, learned and RoPE positions"),
    "attention": ("zoo.analysis.attention_maps", "attention maps of a checkpoint"),
    "embeddings": ("zoo.analysis.embeddings", "input embeddings, analogy, sentence similarity"),
    "lowpass": ("zoo.analysis.lowpass", "ViT vs CNN: high-frequency amplitude by depth"),
}
PROG = "python -m zoo.analysis"


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one line: ``<prog>: error: <message>``, exit code 2."""

  def error(self, message):
    sys.stderr.write(f"{self.prog}: error: {message}\n")
    sys.exit(2)


def main(argv=None) -> int:
  parser = _Parser(prog=PROG, description=__doc__)
  sub = parser.add_subparsers(dest="what", required=True, parser_class=_Parser)
  modules = {}
  for name, (module_name, help_text) in COMMANDS.items():
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--out", default="analysis", help="folder for the PNG and JSON")
    try:
      modules[name] = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
      if e.name != module_name:
        raise
      continue
    modules[name].add_arguments(p)
  args = parser.parse_args(argv)
  if args.what not in modules:
    sub.choices[args.what].error("this command is not available in this version.")
  try:
    modules[args.what].main(args)
  except AnalysisError as e:
    sub.choices[args.what].error(str(e))
  print(f"wrote {args.out}/{args.what}.png and {args.out}/{args.what}.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
