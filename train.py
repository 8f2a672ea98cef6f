"""Train any zoo model: ``python train.py --config configs/<file>.py[:<arg>] --workdir DIR``.

Examples::

  python train.py --config configs/gpt.py:smoke --workdir /tmp/gpt-smoke
  python train.py --config configs/gpt.py:gpt2-small --workdir runs/gpt2 \\
      --config.train.batch_size=128 --config.mesh.fsdp=4 --config.model.compute_dtype=bfloat16
  python train.py --config configs/vit.py:vit-b16 --workdir runs/vit \\
      --config.data.source=tfds --config.data.tfds_name=cifar100

Any config key can be overridden with ``--config.<path>=<value>``; an unknown key fails with
the closest matches. ``--config.model.overrides.<field>`` may name any field of the family's
model config (``zoo.get_config(name)``). Running the same command again resumes from the
latest checkpoint in ``--workdir``; SIGTERM / Ctrl-C save a checkpoint before exiting.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import logging
import sys

from absl import flags
from ml_collections import config_flags

EXIT_USAGE = 2  # bad command line or config
EXIT_NONFINITE = 3  # loss became NaN / inf
EXIT_SIGNAL = {"SIGTERM": 143, "SIGINT": 130}  # 128 + signal number, checkpoint saved


class UsageError(ValueError):
  pass


def _split_overrides(args: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """``--config.a.b=v`` (or ``--config.a.b v``) pairs apart from the other arguments."""
  rest, overrides = [], []
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--config."):
      if "=" in arg:
        path, value = arg[len("--config."):].split("=", 1)
      elif i + 1 < len(args) and not args[i + 1].startswith("--"):
        path, value = arg[len("--config."):], args[i + 1]
        i += 1
      else:
        raise UsageError(f"{arg} needs a value: {arg}=<value>.")
      overrides.append((path, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _literal(text: str):
  """Command-line text -> Python value for keys config_flags cannot type (None, new fields)."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  if text.lower() in ("none", "null"):
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _model_fields(config) -> set[str]:
  import zoo  # noqa: PLC0415
  from zoo.training.config import family_of_preset  # noqa: PLC0415

  cfg_cls = zoo.registry.get(family_of_preset(config.model.name)).config_cls
  return {f.name for f in dataclasses.fields(cfg_cls)}


def _check_path(config, path: str) -> str:
  """``"typed"`` (config_flags parses it), or ``"untyped"`` (None value) / ``"new_model_field"``
  / ``"new_key"`` (set by us from a literal)."""
  parts = path.split(".")
  node = config
  for depth, key in enumerate(parts):
    here = ".".join(parts[:depth])
    is_dict = hasattr(node, "keys") and not isinstance(node, (str, bytes))
    if is_dict and key in node:
      node = node[key]
      continue
    if here == "train.compiler_options" and depth == len(parts) - 1:
      return "new_key"  # XLA option names are XLA's to check
    if here == "model.overrides" and depth == len(parts) - 1:
      fields = _model_fields(config)
      if key in fields:
        return "new_model_field"
      close = difflib.get_close_matches(key, sorted(fields), n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise UsageError(
          f"unknown model field --config.{path}: {config.model.name} has no field {key!r}.{hint}"
      )
    siblings = sorted(node.keys()) if is_dict else []
    close = [f"{here}.{c}" if here else c for c in difflib.get_close_matches(key, siblings, n=3)]
    close += [c for c in difflib.get_close_matches(path, _all_paths(config), n=3) if c not in close]
    hint = f" Did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
    where = f"config.{here}" if here else "the config"
    raise UsageError(
        f"unknown config key --config.{path}: {where} has no key {key!r}.{hint}"
        + (f" Keys there: {', '.join(siblings)}." if siblings else "")
    )
  return "untyped" if node is None else "typed"


def _all_paths(node, prefix: str = "") -> list[str]:
  out = []
  for key in node.keys():
    path = f"{prefix}{key}"
    out.append(path)
    value = node[key]
    if hasattr(value, "keys") and not isinstance(value, (str, bytes)):
      out += _all_paths(value, path + ".")
  return out


def _set(config, path: str, value) -> None:
  *parents, key = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  with config.unlocked():
    node[key] = value


def parse(argv: list[str]):
  """``(config, workdir, print_config)`` from a command line; ``UsageError`` when it is wrong."""
  rest, overrides = _split_overrides(argv[1:])

  def load(extra: list[str]):
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "run config: configs/<file>.py[:<arg>]", flag_values=fv,
        lock_config=True, sys_argv=[argv[0], *rest, *extra],
    )
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs)", flag_values=fv)
    flags.DEFINE_bool("print_config", False, "print the resolved config and exit", flag_values=fv)
    try:
      fv([argv[0], *rest, *extra])
    except flags.Error as e:
      raise UsageError(str(e)) from None
    if fv.config is None:
      raise UsageError("--config is required, e.g. --config configs/gpt.py:smoke.")
    return fv

  base = load([]).config
  typed, special = [], []
  for path, value in overrides:
    kind = _check_path(base, path)
    (typed if kind == "typed" else special).append((path, value))
  fv = load([f"--config.{p}={v}" for p, v in typed])
  config = fv.config
  for path, value in special:
    _set(config, path, _literal(value))
  if not fv.workdir and not fv.print_config:
    raise UsageError("--workdir is required (checkpoints and logs go there; reused to resume).")
  return config, fv.workdir, fv.print_config


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  from absl import logging as absl_logging  # noqa: PLC0415

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO

  from zoo.training import mesh as mesh_lib  # noqa: PLC0415

  mesh_lib.maybe_initialize_distributed()  # before anything touches a device
  try:
    config, workdir, print_config = parse(argv)
  except ValueError as e:
    print(f"train.py: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  if print_config:
    print(config)
    return 0

  from zoo.training.loop import NonFiniteLossError, train  # noqa: PLC0415

  try:
    result = train(config, workdir)
  except NonFiniteLossError as e:
    print(f"train.py: {e}", file=sys.stderr)
    return EXIT_NONFINITE
  except ValueError as e:
    print(f"train.py: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  if result.interrupted:
    return EXIT_SIGNAL.get(result.interrupted, 1)
  final = ", ".join(f"{k}={v:.4g}" for k, v in result.eval.items())
  losses = [result.losses[k] for k in sorted(result.losses)]
  if losses:
    print(f"done: step {result.step}, train loss {losses[0]:.4g} -> {losses[-1]:.4g}"
          + (f"; eval {final}" if final else ""), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
