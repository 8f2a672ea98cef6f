"""Command line: convert checkpoints between Hugging Face, zoo and ViT ``.npz`` formats.

  python -m zoo.pretrained convert IN OUT [--to zoo|hf] [--dtype bfloat16] [--image-size N]
  python -m zoo.pretrained export RUN OUT [--step N]
  python -m zoo.pretrained info IN

``convert`` reads IN with :func:`zoo.pretrained.from_pretrained` (a Hugging Face folder, a zoo
checkpoint folder or a ViT ``.npz``) and writes OUT as a zoo checkpoint (``zoo_config.json``
+ ``params.msgpack``) when IN is Hugging Face / npz, or as a Hugging Face folder when IN is a
zoo checkpoint; ``--to`` forces the output format. Tokenizer files are copied along.
``export`` writes a train.py run directory as a Hugging Face folder (``zoo.pretrained.export``):
labels, special token ids and the run's tokenizer included, LoRA adapters merged.
"""

from __future__ import annotations

import argparse
import os
import sys


def _is_zoo(path: str) -> bool:
  from zoo.pretrained.api import ZOO_CONFIG

  return os.path.isdir(path) and os.path.exists(os.path.join(path, ZOO_CONFIG))


def convert(
    src: str, dst: str, *, to: str | None = None, dtype: str | None = None, **overrides
) -> str:
  """Convert ``src`` to ``dst``; returns the output format ("zoo" or "hf")."""
  from zoo.pretrained import api

  to = to or ("hf" if _is_zoo(src) else "zoo")
  if to not in ("zoo", "hf"):
    raise ValueError(f"--to must be 'zoo' or 'hf'; got {to!r}.")
  model, params = api.from_pretrained(src, dtype=dtype, **overrides)
  if to == "zoo":
    api.save_zoo(model, params, dst)
  else:
    api.save_pretrained(model, params, dst)
  from zoo.pretrained.export import copy_tokenizer

  copy_tokenizer(src if os.path.isdir(src) else os.path.dirname(src), dst)
  return to


def info(src: str) -> str:
  """A short description: family, config, parameter count."""
  import dataclasses

  import jax

  from zoo.pretrained import api

  model, params = api.from_pretrained(src)
  n = sum(x.size for x in jax.tree.leaves(params))
  fields = ", ".join(
      f"{f.name}={getattr(model.config, f.name)!r}" for f in dataclasses.fields(model.config)
  )
  return f"{type(model).__name__} ({n:,} parameters)\n{type(model.config).__name__}({fields})"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m zoo.pretrained", description=__doc__.split("\n")[0]
  )
  sub = parser.add_subparsers(dest="command", required=True)
  c = sub.add_parser("convert", help="convert IN (HF folder / zoo folder / .npz) to OUT")
  c.add_argument("src", metavar="IN")
  c.add_argument("dst", metavar="OUT")
  c.add_argument("--to", choices=("zoo", "hf"), default=None,
                 help="output format (default: zoo for HF/npz input, hf for zoo input)")
  c.add_argument("--dtype", default=None, help="parameter dtype, e.g. bfloat16 (default float32)")
  c.add_argument("--image-size", type=int, default=None,
                 help="ViT only: resize the position table to this resolution")
  e = sub.add_parser("export", help="write a train.py run (RUN = its --workdir) as a HF folder")
  e.add_argument("src", metavar="RUN")
  e.add_argument("dst", metavar="OUT")
  e.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  i = sub.add_parser("info", help="print the model family, config and parameter count")
  i.add_argument("src", metavar="IN")
  parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
  args = parser.parse_args(argv)
  try:
    _run(args)
  except (ValueError, OSError) as e:  # expected: bad paths, formats, configs
    if args.verbose:
      raise
    print(f"python -m zoo.pretrained {args.command}: error: {e}", file=sys.stderr)
    return 2
  return 0


def _run(args) -> None:
  if args.command == "convert":
    overrides = {} if args.image_size is None else {"image_size": args.image_size}
    to = convert(args.src, args.dst, to=args.to, dtype=args.dtype, **overrides)
    print(f"wrote {'zoo checkpoint' if to == 'zoo' else 'Hugging Face folder'} {args.dst}")
  elif args.command == "export":
    from zoo.pretrained.export import export_run

    done = export_run(args.src, args.dst, step=args.step)
    tok = ", ".join(done["tokenizer"]) or "none (the run's tokenizer has no Hugging Face form)"
    print(f"wrote Hugging Face folder {args.dst} from {done['where']} ({done['model']}); "
          f"labels: {done['labels']}; tokenizer: {tok}")
  else:
    print(info(args.src))


if __name__ == "__main__":
  sys.exit(main())
