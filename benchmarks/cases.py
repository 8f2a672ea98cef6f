"""What a family script declares: a :class:`Case` (one model at one shape) and its two sides.

A case says how to build the zoo model and its batch (:class:`ZooWork`) and each peer, a
Hugging Face or timm PyTorch module with the same architecture, size and batch
(:class:`TorchWork`), plus its units per step and its train FLOPs (:func:`zoo_flops`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# The two FLOP conventions: key -> how it is written in tables.
CONVENTIONS = {
    "full": "6N+12·L·d·T",
    "causal_half": "6N+6·L·d·T (causal ½)",
}


@dataclasses.dataclass
class ZooWork:
  """A zoo model config, the name of its registered task ("lm", ...) and one host batch."""

  config: Any
  task: str
  batch: dict[str, np.ndarray]


@dataclasses.dataclass
class TorchWork:
  """A float32 PyTorch module and its inputs; ``loss(module, inputs)`` defaults to ``.loss``."""

  model: Any
  train_inputs: dict[str, Any]
  forward_inputs: dict[str, Any]
  loss: Callable[[Any, dict[str, Any]], Any] | None = None


@dataclasses.dataclass
class Case:
  """One model at one shape, measured for zoo and every peer.

  Attributes:
    model: preset name ("gpt2-small").
    shape: human-readable shape ("B=1 T=1024").
    unit: "tokens" or "images".
    units: units per step (B*T tokens, B images; source + target tokens for seq2seq).
    flops: train FLOPs per step under each of :data:`CONVENTIONS`.
    zoo: builds the zoo side (called once, lazily).
    peers: library name ("hf", "timm") -> builder of the PyTorch side.
  """

  model: str
  shape: str
  unit: str
  units: int
  flops: dict[str, float]
  zoo: Callable[[], ZooWork]
  peers: dict[str, Callable[[], TorchWork]]


def zoo_flops(cfg: Any, batch: dict[str, np.ndarray]) -> dict[str, float]:
  """Train FLOPs of one step on ``batch`` under both :data:`CONVENTIONS`.

  The family's own formula (``zoo.registry.family_of(cfg).train_flops``), on parameter shapes
  only: the number the training loop's MFU is computed from.
  """
  from zoo import registry  # noqa: PLC0415

  family = registry.family_of(cfg)
  args, kwargs = family.dummy_inputs(cfg)
  model = registry.build(cfg)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))["params"]
  shapes = {k: tuple(np.shape(v)) for k, v in batch.items()}
  return family.train_flops(cfg, nn.unbox(params), shapes)


def zoo_overrides(args) -> dict[str, Any]:
  """Config fields every family shares, from the command line."""
  return {
      "dtype": jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
      "scan_layers": bool(args.scan_layers),
      "remat_policy": args.remat,
      "attention_impl": args.attention_impl,
  }


def rng(seed: int = 0) -> np.random.RandomState:
  return np.random.RandomState(seed)
