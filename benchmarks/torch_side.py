"""The PyTorch side of a case: a Hugging Face or timm module in the ordinary training loop.

``loss = model(**inputs, labels=...).loss; loss.backward(); opt.step();
opt.zero_grad(set_to_none=True)`` with ``torch.optim.AdamW`` (lr 1e-4, betas 0.9 / 0.999, eps
1e-8, weight decay 0.01, no clipping: zoo's ``zoo_side.optim_config``), eagerly or under
``torch.compile`` (compile time = the first call); on a GPU under
``torch.autocast(bfloat16)`` when the run's dtype is bfloat16.
"""

from __future__ import annotations

import contextlib
import gc
import sys

import numpy as np

from benchmarks import cases, env, report, timing


def _torch():
  import torch

  return torch


def torch_device():
  torch = _torch()
  return torch.device("cuda" if env.on_gpu() and torch.cuda.is_available() else "cpu")


def _to(x, device):
  torch = _torch()
  if isinstance(x, np.ndarray):
    if np.issubdtype(x.dtype, np.integer):
      x = x.astype(np.int64)  # PyTorch's index dtype (embeddings, cross entropy targets)
    x = torch.from_numpy(np.ascontiguousarray(x))
  return x.to(device) if isinstance(x, torch.Tensor) else x


class _Peer:
  """One module on its device with its inputs and optimizer: the steps a peer is timed on."""

  def __init__(self, work: cases.TorchWork, device, mode: str, args):
    torch = _torch()
    cuda = device.type == "cuda"
    self.model = work.model.to(device).train()
    self.train_in = {k: _to(v, device) for k, v in work.train_inputs.items()}
    self.fwd_in = {k: _to(v, device) for k, v in work.forward_inputs.items()}
    self.loss_fn = work.loss or (lambda m, inputs: m(**inputs).loss)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.999),
                                 eps=1e-8, weight_decay=0.01)
    self.runner = torch.compile(self.model) if mode == "compile" else self.model
    self.sync = torch.cuda.synchronize if cuda else (lambda: None)
    bf16 = args.dtype == "bfloat16" and cuda
    self.autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16
        else contextlib.nullcontext
    )
    self.inference_mode = torch.inference_mode
    self.losses = []

  def train_step(self):
    with self.autocast():
      loss = self.loss_fn(self.runner, self.train_in)
    loss.backward()
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    self.sync()
    self.losses.append(loss.detach())

  def forward(self):
    with self.inference_mode(), self.autocast():
      self.runner(**self.fwd_in)
    self.sync()

  def set_mode(self, which: str):
    self.model.train(which == "train")


def prepare(case: cases.Case, library: str, mode: str, args) -> timing.Prepared:
  """Build and warm up one PyTorch peer (``mode`` "eager" or "compile").

  A peer that fails (``torch.compile`` without a working compiler, a missing library) comes
  back as ``{"error": "failed: <reason>"}`` in ``result`` and no step functions; it never
  takes the run down.
  """
  torch = _torch()
  torch.set_num_threads(args.threads)
  device = torch_device()
  name = f"{library} {'torch.compile' if mode == 'compile' else 'eager'}"
  prepared = timing.Prepared({"framework": name})
  host = timing.HostMemory()
  host.start()
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  try:
    torch.manual_seed(0)
    peer = _Peer(case.peers[library](), device, mode, args)
    host.built()
    first = timing.first_call(peer.train_step)  # torch.compile compiles here
    host.arm()
    peer.train_step()  # the step whose peak memory is reported
    train = {"first_s": first, "loss_first": float(peer.losses[0])}
    if mode == "compile":
      train["compile_s"] = first
    if device.type == "cuda":
      train["memory"] = {"bytes": int(torch.cuda.max_memory_allocated()),
                         "how": "torch.cuda.max_memory_allocated"}
    else:
      train["memory"] = host.peak()
    prepared.result["train"] = train
    prepared.train = peer.train_step
  except Exception as err:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
    prepared.result["error"] = report.short_error(err)
    return prepared
  prepared.set_mode = peer.set_mode
  if not args.no_forward:
    _prepare_forward(prepared, peer, mode)
  return prepared


def _prepare_forward(prepared: timing.Prepared, peer: _Peer, mode: str) -> None:
  """The forward pass in ``eval()`` mode without gradient; a failure is reported in
  ``result["forward_error"]`` and leaves the train step timed."""
  try:
    peer.set_mode("forward")
    first = timing.first_call(peer.forward)  # torch.compile compiles the eval graph here
    prepared.result["forward"] = {"first_s": first}
    if mode == "compile":
      prepared.result["forward"]["compile_s"] = first
    prepared.forward = peer.forward
  except Exception as err:  # noqa: BLE001
    prepared.result["forward_error"] = report.short_error(err)
  peer.set_mode("train")


def release(modes: list[str]) -> None:
  """Free what PyTorch holds between cases (cached device memory, compiled graphs)."""
  if "torch" not in sys.modules:
    return
  torch = _torch()
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
  if "compile" in modes:
    torch.compiler.reset()  # drop compiled graphs between cases
