"""Train any zoo model: ``python train.py --config configs/<file>.py[:<arg>] --workdir DIR``.

Examples::

  python train.py --config configs/gpt.py:smoke --workdir /tmp/gpt-smoke
  python train.py --config configs/gpt.py:gpt2-medium --workdir runs/gpt2 \\
      --config.train.batch_size=128 --config.mesh.fsdp=4 --config.model.dtype=bfloat16
  python train.py --config configs/vit.py:vit-b16 --workdir runs/vit \\
      --config.data.source=tfds --config.data.tfds_name=cifar100

The ``:<arg>`` picks the model preset or a variant (``python train.py --help`` lists them).
The config it returns holds every key, ``config.model`` every field of the family's model
config, so ``ml_collections.config_flags`` types and checks each ``--config.<path>=<value>``;
an unknown key fails with the closest matches (``--print_config`` lists them all). Running
the same command again resumes from the latest checkpoint in ``--workdir``; SIGTERM / Ctrl-C
save a checkpoint before exiting.
"""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import logging
import os
import pathlib
import sys
import textwrap

from absl import flags
from ml_collections import config_flags

EXIT_USAGE = 2  # bad command line or config
EXIT_NONFINITE = 3  # loss became NaN / inf
EXIT_SIGNAL = {"SIGTERM": 143, "SIGINT": 130}  # 128 + signal number, checkpoint saved
EXIT_PEER = 4  # several processes: another process died (or this one failed) mid-run
CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


class UsageError(ValueError):
  pass


def load_config_module(path: str):
  """The module of a run-config file; ``UsageError`` when it is missing or has no get_config."""
  if not os.path.isfile(path):
    known = [str(p.relative_to(CONFIGS.parent)) for p in sorted(CONFIGS.glob("*.py"))]
    from zoo.registry import did_you_mean  # noqa: PLC0415 - keeps --help fast

    raise UsageError(f"config file {path!r} not found.{did_you_mean(path, known)}")
  # A source loader, as config_flags uses: the file need not end in .py.
  loader = importlib.machinery.SourceFileLoader("zoo_run_config_" + pathlib.Path(path).stem, path)
  spec = importlib.util.spec_from_loader(loader.name, loader)
  module = importlib.util.module_from_spec(spec)
  try:
    loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - any failure of a user's file is a usage error here
    raise UsageError(f"cannot load config file {path}: {type(e).__name__}: {e}") from None
  if not callable(getattr(module, "get_config", None)):
    raise UsageError(f"config file {path} has no get_config(arg=None) function.")
  return module


def _check_config_arg(spec: str) -> None:
  """Fail with one line on a missing file or a bad ``:arg``, before config_flags runs it."""
  from zoo.training.config import choose  # noqa: PLC0415

  path, _, arg = spec.partition(":")
  module = load_config_module(path)
  if arg and getattr(module, "ARGS", None):
    try:
      choose(arg, module.ARGS)
    except ValueError as e:
      raise UsageError(f"{path}: {e}") from None


def usage() -> str:
  """``--help``: the command line, every ``configs/*.py`` with its ``:arg`` choices, keys."""
  lines = [
      "usage: python train.py --config configs/<file>.py[:<arg>] --workdir DIR "
      "[--config.<key>=<value> ...]",
      "       python train.py --config configs/<file>.py[:<arg>] --print_config",
      "",
      "Trains a zoo model; the same command again resumes from the latest checkpoint in DIR.",
      "",
      "configs (the first :<arg> is the default):",
  ]
  paths = sorted(CONFIGS.glob("*.py"))
  width = max((len(str(p.relative_to(CONFIGS.parent))) for p in paths), default=0)
  for path in paths:
    rel = str(path.relative_to(CONFIGS.parent))
    try:
      module = load_config_module(str(path))
    except UsageError as e:
      lines.append(f"  {rel}: {e}")
      continue
    doc = (module.__doc__ or "").strip().splitlines()
    lines.append(f"  {rel.ljust(width)}  {doc[0].replace('``', '') if doc else ''}".rstrip())
    args = ", ".join(getattr(module, "ARGS", ())) or "(get_config takes no :arg list)"
    lines += textwrap.wrap(args, 96, initial_indent="      ", subsequent_indent="      ",
                           break_on_hyphens=False)  # preset names stay whole
  lines += [
      "",
      "flags:",
      "  --config FILE[:ARG]    the run config (required)",
      "  --workdir DIR          checkpoints, logs, metrics; reused to resume (required to train)",
      "  --print_config         print the resolved config (every key) and exit",
      "  --config.<key>=<value> override any key, typed by the config, e.g.",
      "                         --config.train.batch_size=128 --config.model.num_layers=6",
      "                         --config.model.dtype=bfloat16 (params stay float32)",
      "                         --config.train.compiler_options="
      "\"{'xla_backend_optimization_level': 0}\"",
      "  -h, --help             this message",
      "",
      "List the keys: python train.py --config configs/gpt.py:smoke --print_config",
  ]
  return "\n".join(lines)


def _override_paths(argv: list[str]) -> list[str]:
  """The ``<path>`` of every ``--config.<path>[=<value>]`` (to name an unknown key)."""
  prefixes = ("--config.", "-config.")
  return [a.split("=", 1)[0].split(".", 1)[1] for a in argv if a.startswith(prefixes)]


def _unknown_key(config, path: str) -> str | None:
  """A message for the first part of ``path`` missing in ``config``; None if all exist."""
  parts = path.split(".")
  node = config
  for depth, key in enumerate(parts):
    is_dict = hasattr(node, "keys") and not isinstance(node, (str, bytes))
    if is_dict and key in node:
      node = node[key]
      continue
    here = ".".join(parts[:depth])
    where = f"config.{here}" if here else "the config"
    if not is_dict:
      return f"unknown config key --config.{path}: config.{here} is a value, not a dict."
    siblings = sorted(node.keys())
    if not siblings:
      return (f"unknown config key --config.{path}: {where} is empty; set it whole with a dict, "
              f"--config.{here}=\"{{'{key}': ...}}\".")
    close = [f"{here}.{c}" if here else c for c in difflib.get_close_matches(key, siblings, n=3)]
    if not close:  # a key in the wrong section: --config.batch_size
      close = difflib.get_close_matches(path, _all_paths(config), n=3)
    hint = f" Did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
    return (f"unknown config key --config.{path}: {where} has no key {key!r}.{hint}"
            f" Keys there: {', '.join(siblings)}.")
  return None


def _all_paths(node, prefix: str = "") -> list[str]:
  out = []
  for key in node.keys():
    path = f"{prefix}{key}"
    out.append(path)
    value = node[key]
    if hasattr(value, "keys") and not isinstance(value, (str, bytes)):
      out += _all_paths(value, path + ".")
  return out


def _one_line(message: str) -> str:
  """config_flags puts a traceback in some messages; its last line says what went wrong."""
  lines = [line for line in str(message).splitlines() if line.strip()]
  if len(lines) > 1 and any("Traceback" in line for line in lines):
    return lines[-1].strip()
  return " ".join(line.strip() for line in lines)


def _flags(argv: list[str]) -> flags.FlagValues:
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "run config: configs/<file>.py[:<arg>]", flag_values=fv,
      lock_config=True, sys_argv=argv,
  )
  flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs)", flag_values=fv)
  flags.DEFINE_bool("print_config", False, "print the resolved config and exit", flag_values=fv)
  flags.DEFINE_bool("help", False, "show the usage and the config files", short_name="h",
                    flag_values=fv)
  return fv


def parse(argv: list[str]):
  """``(config, workdir, print_config)`` from a command line; ``UsageError`` when it is wrong.

  Returns ``(None, None, False)`` for ``--help``.
  """
  # A first pass reads --config and --help alone, so that a missing file or a bad :arg is
  # one clear line instead of config_flags' traceback, and --help needs no config.
  pre = flags.FlagValues()
  flags.DEFINE_string("config", None, "", flag_values=pre)
  flags.DEFINE_bool("help", False, "", short_name="h", flag_values=pre)
  try:
    pre(argv, known_only=True)
  except flags.Error as e:
    raise UsageError(_one_line(e)) from None
  if pre.help:
    return None, None, False
  if not pre.config:
    raise UsageError("--config is required, e.g. --config configs/gpt.py:smoke (see --help).")
  _check_config_arg(pre.config)

  fv = _flags(argv)
  try:
    rest = fv(argv)
    config = fv.config
  except (AttributeError, KeyError) as e:  # config_flags' KeyError for an unknown key
    path, _, arg = pre.config.partition(":")
    base = load_config_module(path).get_config(*([arg] if arg else []))
    for p in _override_paths(argv):
      if message := _unknown_key(base, p):
        raise UsageError(message) from None
    raise UsageError(_one_line(e)) from None
  except (flags.Error, OSError, TypeError, ValueError) as e:
    raise UsageError(_one_line(e)) from None
  if len(rest) > 1:  # `--config.train.plot False` sets True and leaves "False" behind
    raise UsageError(f"unexpected argument {rest[1]!r}; write values as --config.<key>=<value>.")
  if "model.name" in fv["config"].override_values:
    raise UsageError(
        "--config.model.name: the preset is chosen by the config argument "
        f"(--config {pre.config.partition(':')[0]}:<preset>); see --help."
    )
  if not fv.workdir and not fv.print_config:
    raise UsageError("--workdir is required (checkpoints and logs go there; reused to resume).")
  return config, fv.workdir, fv.print_config


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  from absl import logging as absl_logging  # noqa: PLC0415

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO

  from zoo.training import mesh as mesh_lib  # noqa: PLC0415

  try:
    mesh_lib.maybe_initialize_distributed()  # before anything touches a device
    config, workdir, print_config = parse(argv)
  except ValueError as e:
    print(f"train.py: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  if config is None:
    print(usage())
    return 0
  if print_config:
    print(config)
    return 0

  import jax  # noqa: PLC0415

  from zoo.training.loop import NonFiniteLossError, train  # noqa: PLC0415

  if jax.process_count() > 1:
    return _several_processes(lambda: _train(train, config, workdir, NonFiniteLossError))
  return _train(train, config, workdir, NonFiniteLossError)


def _first_line(e: BaseException, limit: int) -> str:
  return (str(e).strip().splitlines() or [""])[0][:limit]


def _several_processes(body) -> int:
  """Run ``body`` as one of several processes: on any failure, say which process failed and
  why, then leave at once.

  Leaving without ``jax.distributed.shutdown()`` matters: its barrier would hold this process
  for minutes waiting for a dead peer, and a live peer blocked in a collective only notices
  this process is gone when its sockets close (the coordination service's heartbeat timeout,
  ``ZOO_HEARTBEAT_TIMEOUT_S``, catches a host that vanished without closing them).
  """
  import threading  # noqa: PLC0415

  import jax  # noqa: PLC0415

  who = f"process {jax.process_index()} of {jax.process_count()}"

  def thread_failed(args):  # e.g. Orbax's commit thread when a peer died: one line, no traceback
    print(f"train.py: {who}: background thread {args.thread.name if args.thread else '?'} "
          f"failed: {args.exc_type.__name__}: {_first_line(args.exc_value, 200)}",
          file=sys.stderr, flush=True)

  class OneLine(logging.Filter):  # Orbax logs its failed save threads with their tracebacks
    def filter(self, record):
      if record.exc_info:
        e = record.exc_info[1]
        record.msg = f"{record.getMessage()} ({type(e).__name__}: {_first_line(e, 200)})"
        record.args, record.exc_info, record.exc_text = None, None, None
      return True

  for name in ("absl", ""):
    logging.getLogger(name).addFilter(OneLine())
  threading.excepthook = thread_failed
  try:
    code = body()
  except BaseException as e:  # noqa: BLE001 - every failure ends this process the same way
    first = _first_line(e, 300)
    if isinstance(e, jax.errors.JaxRuntimeError):
      why = (f"a collective or the coordination service failed ({first}): another process "
             "has probably died (its log says why), or the network between hosts broke")
    else:
      why = f"{type(e).__name__}: {first}"
    print(f"train.py: {who} stopped: {why}. The last complete checkpoint in the workdir is "
          "intact; run the same command on every host again to resume from it.",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER)
  if code:  # an expected error, already printed: the peers are not waiting for this one
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  return code


def _train(train, config, workdir, NonFiniteLossError) -> int:  # noqa: N803
  try:
    result = train(config, workdir)
  except NonFiniteLossError as e:
    print(f"train.py: {e}", file=sys.stderr)
    return EXIT_NONFINITE
  except (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError) as e:
    # Expected errors (bad config, paths, checkpoints): one paragraph, no traceback.
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
