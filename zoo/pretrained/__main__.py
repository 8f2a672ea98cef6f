"""Command line: convert checkpoints between Hugging Face, zoo and ViT ``.npz`` formats.

  python -m zoo.pretrained convert IN OUT [--to zoo|hf] [--dtype bfloat16] [--image-size N]
  python -m zoo.pretrained info IN

``convert`` reads IN with :func:`zoo.pretrained.from_pretrained` (a Hugging Face folder, a zoo
checkpoint folder or a ViT ``.npz``) and writes OUT as a zoo checkpoint (``zoo_config.json``
+ ``params.msgpack``) when IN is Hugging Face / npz, or as a Hugging Face folder when IN is a
zoo checkpoint; ``--to`` forces the output format. Tokenizer files are copied along.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "source.spm", "target.spm",
)


def _is_zoo(path: str) -> bool:
  from zoo.pretrained.api import ZOO_CONFIG

  return os.path.isdir(path) and os.path.exists(os.path.join(path, ZOO_CONFIG))


def convert(src: str, dst: str, *, to: str | None = None, dtype: str | None = None, **overrides) -> str:
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
  src_dir = src if os.path.isdir(src) else os.path.dirname(src)
  for name in TOKENIZER_FILES:
    if os.path.exists(os.path.join(src_dir, name)):
      shutil.copy2(os.path.join(src_dir, name), os.path.join(dst, name))
  return to


def info(src: str) -> str:
  """A short description: family, config, parameter count."""
  import dataclasses

  import jax

  from zoo.pretrained import api

  model, params = api.from_pretrained(src)
  n = sum(x.size for x in jax.tree.leaves(params))
  fields = ", ".join(f"{f.name}={getattr(model.config, f.name)!r}" for f in dataclasses.fields(model.config))
  return f"{type(model).__name__} ({n:,} parameters)\n{type(model.config).__name__}({fields})"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m zoo.pretrained", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  c = sub.add_parser("convert", help="convert IN (HF folder / zoo folder / .npz) to OUT")
  c.add_argument("src", metavar="IN")
  c.add_argument("dst", metavar="OUT")
  c.add_argument("--to", choices=("zoo", "hf"), default=None,
                 help="output format (default: zoo for HF/npz input, hf for zoo input)")
  c.add_argument("--dtype", default=None, help="parameter dtype, e.g. bfloat16 (default float32)")
  c.add_argument("--image-size", type=int, default=None,
                 help="ViT only: resize the position table to this resolution")
  i = sub.add_parser("info", help="print the model family, config and parameter count")
  i.add_argument("src", metavar="IN")
  args = parser.parse_args(argv)
  if args.command == "convert":
    overrides = {} if args.image_size is None else {"image_size": args.image_size}
    to = convert(args.src, args.dst, to=args.to, dtype=args.dtype, **overrides)
    print(f"wrote {'zoo checkpoint' if to == 'zoo' else 'Hugging Face folder'} {args.dst}")
  else:
    print(info(args.src))
  return 0


if __name__ == "__main__":
  sys.exit(main())
