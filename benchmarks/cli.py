"""The command line every family script shares: flags, device-dependent defaults, checks."""

from __future__ import annotations

import argparse

from benchmarks import env as env_lib

PEER_MODES = ("eager", "compile", "timm")


def parser(description: str) -> argparse.ArgumentParser:
  """The flags every family script takes."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--smoke", action="store_true", help="tiny shapes: seconds on a CPU (tests)")
  p.add_argument("--batch-size", type=int, default=None, help="rows per step (default: per script)")
  p.add_argument("--steps", type=int, default=None,
                 help="timed steps (default 3 on CPU, 20 on GPU, 2 smoke)")
  p.add_argument("--warmup", type=int, default=None,
                 help="extra untimed steps before timing (default 0 on CPU, 3 on GPU); the "
                 "first (compiling) train step and the one measuring peak memory always run")
  p.add_argument("--schedule", choices=("interleaved", "sequential"), default=None,
                 help="interleaved: all frameworks built, then timed round robin (default on "
                 "CPU: fair under a drifting load); sequential: one after the other (default on "
                 "GPU: one framework in device memory at a time)")
  p.add_argument(
      "--peers", default="eager,compile,timm",
      help="comma list of PyTorch variants: eager (Hugging Face), compile (Hugging Face under "
      "torch.compile), timm (ViT on GPU only); empty = zoo alone",
  )
  p.add_argument("--no-forward", action="store_true", help="time the training step only")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="compute dtype (default: bfloat16 on GPU, float32 on CPU)")
  p.add_argument("--scan-layers", action="store_true", help="zoo: nn.scan over layers")
  p.add_argument("--remat", default="none", help="zoo remat_policy (none|full|dots|...)")
  p.add_argument("--attention-impl", default=None, choices=("xla", "chunked", "cudnn"),
                 help="zoo attention implementation (default: the models' own choice, None)")
  p.add_argument("--threads", type=int, default=None,
                 help="CPU threads for PyTorch (default: all cores)")
  p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (TFLOP/s)")
  p.add_argument("--measure-peak", action="store_true",
                 help="CPU: use a timed float32 matmul as the peak for MFU")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--markdown", default=None, help="write the markdown table here")
  return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
  """Parse, fill the defaults that depend on the device, validate."""
  args = p.parse_args(argv)
  gpu = env_lib.on_gpu()
  if args.steps is None:
    args.steps = 2 if args.smoke else 20 if gpu else 3
  if args.warmup is None:
    args.warmup = 3 if gpu and not args.smoke else 0
  if args.schedule is None:
    args.schedule = "sequential" if gpu else "interleaved"
  args.interleave = args.schedule == "interleaved"
  if args.dtype is None:
    args.dtype = "bfloat16" if gpu else "float32"
  if args.steps < 1 or args.warmup < 0:
    raise ValueError(f"need --steps >= 1 and --warmup >= 0; got {args.steps}, {args.warmup}.")
  if args.batch_size is not None and args.batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}.")
  peers = [m.strip() for m in args.peers.split(",") if m.strip()]
  for m in peers:
    if m not in PEER_MODES:
      raise ValueError(f"--peers takes a comma list of {PEER_MODES}; got {m!r}.")
  args.peer_modes = peers
  if args.threads is None:
    args.threads = env_lib.num_cores()
  return args


def parse_ints(flag: str, text: str) -> list[int]:
  """``"128,512"`` -> ``[128, 512]``; a ValueError naming the flag otherwise."""
  try:
    values = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise ValueError(
        f"{flag} takes a comma list of positive integers (e.g. 128,512); got {text!r}."
    )
  return values
