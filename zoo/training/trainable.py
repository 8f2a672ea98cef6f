"""What trains: frozen parameters by pattern, and LoRA adapters on chosen projections.

Both act on parameter *paths* (``"encoder/layers_3/attn/query/kernel"``; scanned stacks
read ``"encoder/layers/attn/query/kernel"``), matched with :func:`re.search`.

* **Freezing**: ``freeze`` is a regular expression; matching leaves get no update and no
  optimizer state (``optax.multi_transform`` with ``optax.set_to_zero``), and their gradients
  are stopped inside the forward pass, so XLA does not even compute them.
* **LoRA** (Hu et al. 2021): for every kernel whose module path matches ``lora.targets``,
  two adapter leaves live next to it, ``lora_a [*in, r]`` and ``lora_b [r, *out]``, and the
  forward pass uses ``kernel + (alpha / r) * a @ b``. ``lora_b`` starts at zero, so the adapted
  model starts equal to the base model; only adapters train (every other leaf is frozen).
  Adapters are ordinary parameters, so they are checkpointed and restored with the state;
  :func:`~zoo.pretrained.workdir.merge_adapters` folds them into the kernels for export or
  generation (it lives with the workdir reader, which must merge without importing training).
* **QLoRA** (Dettmers et al. 2023): with ``base_quant`` ("nf4" or "int8") every frozen
  projection kernel is held quantized (:mod:`zoo.quantize_base`, through qwix) and dequantized
  inside the forward pass; adapters and fresh heads stay float.

The in/out split of a kernel comes from its logical axis names: a projection *into* the model
width (``[N, H, D]`` attention output, ``[F, D]`` MLP output) contracts every axis but the
last; any other kernel contracts its first axis (``[D, N, H]``, ``[D, F]``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util

from zoo import quantize_base as qb
from zoo import sharding as sh
from zoo.pretrained import workdir
from zoo.pretrained.workdir import (  # the adapter names the workdir reader merges by
    ADAPTER_NAMES,
    LORA_A,
    LORA_B,
    LORA_SCALE,
)

__all__ = ["ADAPTER_NAMES", "LORA_A", "LORA_B", "LORA_SCALE", "Trainable", "merge_adapters"]


@dataclasses.dataclass(frozen=True)
class Trainable:
  """Which parameters train.

  Attributes:
    freeze: regular expression over parameter paths; matching leaves stay fixed ("" = none).
    lora_rank: adapter rank r (0 = no LoRA).
    lora_alpha: adapter scale numerator (the update is ``alpha / r * a @ b``).
    lora_targets: regular expression over *module* paths of the kernels to adapt.
    always_train: regular expression over parameter paths that train even when frozen or
      under LoRA (a task head created fresh on a pretrained backbone; "" = none).
    base_quant: QLoRA: frozen kernels held as "nf4" or "int8" codes ("" = float).
  """

  freeze: str = ""
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: str = r"attn/(query|value)$"
  always_train: str = ""
  base_quant: qb.BaseQuant = ""

  def __post_init__(self):
    for name in ("freeze", "lora_targets", "always_train"):
      pattern = getattr(self, name)
      try:
        re.compile(pattern)
      except re.error as e:
        raise ValueError(
            f"{name}={pattern!r} is not a regular expression ({e}); fix the pattern."
        ) from None
    if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
      raise ValueError(f"lora rank must be an integer >= 0 (0 = off); got {self.lora_rank!r}.")
    if self.lora_rank and not self.lora_alpha > 0:
      raise ValueError(f"lora alpha must be > 0; got {self.lora_alpha!r}.")
    if self.base_quant not in qb.BASE_QUANTS:
      raise ValueError(
          f"lora.base_quant={self.base_quant!r} is not a base quantization; choose one of "
          f"{qb.BASE_QUANTS} ('' = a float base)."
      )
    if self.base_quant and not self.lora_rank:
      raise ValueError(
          f"lora.base_quant={self.base_quant!r} quantizes the frozen base under LoRA adapters; "
          "set lora.rank > 0 (e.g. --config.lora.rank=8) or leave base_quant ''."
      )

  @property
  def active(self) -> bool:
    return bool(self.freeze) or self.lora_rank > 0

  @classmethod
  def from_config(cls, config) -> Trainable:
    """From a run config's ``train.freeze`` and ``lora`` section (missing keys: defaults)."""
    train = config.get("train", {})
    lora = config.get("lora", {})
    return cls(
        freeze=str(train.get("freeze", "") or ""),
        lora_rank=int(lora.get("rank", 0) or 0),
        lora_alpha=float(lora.get("alpha", 16.0)),
        lora_targets=str(lora.get("targets", cls.lora_targets)),
        always_train=str(train.get("always_train", "") or ""),
        base_quant=str(lora.get("base_quant", "") or ""),
    )


def _flat(tree) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def _logical(box) -> tuple:
  return tuple(box.names) if isinstance(box, nn.Partitioned) else (None,) * np.ndim(box)


def _in_axes(names: tuple, ndim: int) -> int:
  """Number of leading (contracted) axes of a kernel with these logical names."""
  return ndim - 1 if ndim > 2 and names[-1] == sh.EMBED else 1


def _box_like(box, value, names: tuple):
  """``value`` in the same kind of box as ``box`` (logical names, rules), with ``names``."""
  if isinstance(box, nn.Partitioned):
    return box.replace(value=value, names=names)
  return value


def lora_targets(boxed_params, trainable: Trainable) -> list[str]:
  """Module paths (``".../attn/query"``) whose ``kernel`` gets adapters."""
  pattern = re.compile(trainable.lora_targets)
  out = []
  for path in _flat(boxed_params):
    module, _, leaf = path.rpartition("/")
    if leaf == "kernel" and pattern.search(module):
      out.append(module)
  return out


def add_adapters(boxed_params, trainable: Trainable, rng: jax.Array):
  """``boxed_params`` with ``lora_a`` / ``lora_b`` / ``lora_scale`` beside each target kernel.

  Works on boxed (``nn.Partitioned``) trees so the adapters carry logical axis names and are
  sharded like their kernel's in and out axes. Call inside the state's initialiser.
  """
  if not trainable.lora_rank:
    return boxed_params
  flat = dict(_flat(boxed_params))
  targets = lora_targets(boxed_params, trainable)
  if not targets:
    modules = sorted({p.rpartition("/")[0] for p in flat if p.endswith("/kernel")})
    raise ValueError(
        f"lora.targets={trainable.lora_targets!r} matches no projection of this model; its "
        f"projections are {', '.join(modules[:12])}{' ...' if len(modules) > 12 else ''}. "
        "Choose a pattern that matches some of them (e.g. 'attn/(query|value)$')."
    )
  r = trainable.lora_rank
  for i, module in enumerate(targets):
    box = flat[f"{module}/kernel"]
    kernel = nn.unbox(box)
    names = _logical(box)
    stacked = 1 if names and names[0] == sh.LAYERS else 0  # nn.scan: a leading [L] axis
    k = _in_axes(names[stacked:], kernel.ndim - stacked)
    lead, shape = kernel.shape[:stacked], kernel.shape[stacked:]
    fan_in = int(np.prod(shape[:k]))
    a = jax.random.normal(jax.random.fold_in(rng, i), (*lead, *shape[:k], r), jnp.float32)
    a = (a / np.sqrt(fan_in)).astype(kernel.dtype)
    b = jnp.zeros((*lead, r, *shape[k:]), kernel.dtype)
    lead_names = names[:stacked]
    flat[f"{module}/{LORA_A}"] = _box_like(box, a, (*lead_names, *names[stacked:][:k], None))
    flat[f"{module}/{LORA_B}"] = _box_like(box, b, (*lead_names, None, *names[stacked:][k:]))
    scale = jnp.full(lead, trainable.lora_alpha / r, jnp.float32)
    flat[f"{module}/{LORA_SCALE}"] = _box_like(box, scale, lead_names) if stacked else scale
  return traverse_util.unflatten_dict(flat, sep="/")


def quantize_frozen(boxed_params, trainable: Trainable):
  """``boxed_params`` with every frozen projection kernel as ``{"codes", "scale"}`` (QLoRA).

  The codes keep the kernel's logical axis names (so its sharding); the scale keeps those of
  the axes it is not reduced over. Call inside the state's initialiser, after the adapters.
  """
  if not trainable.base_quant:
    return boxed_params
  frozen = _flat(frozen_mask(nn.unbox(boxed_params), trainable))
  flat = dict(_flat(boxed_params))
  for path, box in _flat(boxed_params).items():
    kernel = nn.unbox(box)
    if path.rpartition("/")[2] != "kernel" or not frozen[path] or kernel.ndim < 2:
      continue
    names = _logical(box)
    stacked = 1 if names and names[0] == sh.LAYERS else 0
    last_in = stacked + _in_axes(names[stacked:], kernel.ndim - stacked) - 1
    q = qb.quantize_kernel(kernel, trainable.base_quant, last_in)
    scale_names = qb.scale_names(names, last_in, trainable.base_quant, kernel.shape)
    flat[path] = {qb.CODES: _box_like(box, q[qb.CODES], names),
                  qb.SCALE: _box_like(box, q[qb.SCALE], scale_names)}
  return traverse_util.unflatten_dict(flat, sep="/")


def merge_adapters(params):
  """The plain float model tree: quantized kernels dequantized, adapters merged into them."""
  return workdir.merge_adapters(qb.dequantize_base(params))


def has_adapters(params) -> bool:
  return any(p.rpartition("/")[2] == LORA_A for p in _flat(params))


def frozen_mask(params, trainable: Trainable):
  """``True`` for leaves that do not train: the freeze pattern, or everything but adapters."""
  pattern = re.compile(trainable.freeze) if trainable.freeze else None
  keep = re.compile(trainable.always_train) if trainable.always_train else None
  flat = _flat(params)
  out = {}
  for path in flat:
    leaf = path.rpartition("/")[2]
    if trainable.lora_rank:
      frozen = leaf not in (LORA_A, LORA_B)
    else:
      frozen = bool(pattern and pattern.search(path))
    out[path] = frozen and not (keep and keep.search(path) and leaf not in ADAPTER_NAMES)
  if pattern and not any(pattern.search(p) for p in flat):
    prefixes = list(dict.fromkeys("/".join(p.split("/")[:2]) for p in flat))
    raise ValueError(
        f"train.freeze={trainable.freeze!r} matches no parameter; parameter paths start with "
        f"{', '.join(prefixes[:10])}{' ...' if len(prefixes) > 10 else ''}. Fix the pattern "
        "(a regular expression searched in paths such as 'encoder/layers_0/attn/query/kernel')."
    )
  if all(out.values()):
    raise ValueError(
        f"train.freeze={trainable.freeze!r} freezes every parameter, so nothing would train; "
        "narrow the pattern."
    )
  return traverse_util.unflatten_dict(out, sep="/")


def wrap_optimizer(tx: optax.GradientTransformation, trainable: Trainable):
  """``tx`` on the trainable leaves only; frozen leaves get zero updates and no state.

  The labels are computed from the parameter tree ``tx.init`` receives (adapters included).
  """
  if not trainable.active:
    return tx

  def labels(params):
    return jax.tree.map(lambda f: "frozen" if f else "train", frozen_mask(params, trainable))

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


@dataclasses.dataclass(frozen=True)
class _Apply:
  """``apply_fn`` with frozen gradients stopped and adapters merged (compares by value, so
  train states built from the same model and spec have equal tree structures)."""

  apply_fn: Callable
  trainable: Trainable

  def __call__(self, variables, *args, **kwargs):
    params = variables["params"]
    mask = frozen_mask(params, self.trainable)
    params = jax.tree.map(lambda p, frozen: jax.lax.stop_gradient(p) if frozen else p, params, mask)
    return self.apply_fn({**variables, "params": merge_adapters(params)}, *args, **kwargs)


def wrap_apply(apply_fn: Callable, trainable: Trainable) -> Callable:
  """``apply_fn`` that stops gradients of frozen leaves and merges adapters first."""
  return _Apply(apply_fn, trainable) if trainable.active else apply_fn


def counts(params, trainable: Trainable) -> dict[str, int]:
  """``{"total", "trainable", "frozen", "adapters"}`` parameter counts."""
  flat = _flat(params)
  mask = _flat(frozen_mask(params, trainable)) if trainable.active else {p: False for p in flat}
  size = {p: int(np.prod(np.shape(v))) for p, v in flat.items()}
  adapters = sum(n for p, n in size.items() if p.rpartition("/")[2] in ADAPTER_NAMES)
  trainable_n = sum(n for p, n in size.items() if not mask[p])
  total = sum(size.values())
  return {"total": total, "trainable": trainable_n, "frozen": total - trainable_n,
          "adapters": adapters}
