"""Weight-only post-training quantization of a zoo model through qwix.

``zoo.quantize(model, params, "int8")`` gives ``(qmodel, qparams)``: every learned projection
(an :class:`~zoo.layers.dense.Einsum` kernel) is stored as a qwix ``QArray`` (integer or fp8
codes plus float scales, per output channel or per block of the contracted axis) and ``qmodel``
is the same linen module with its einsums intercepted by qwix's PTQ provider, so
``qmodel.apply({"params": qparams}, ...)`` takes the same inputs and gives the same outputs
(decoding caches included). Embedding tables, norms and biases stay float: a table is read by
a gather that qwix does not intercept, and the rest is a small part of the weights.

qwix (Google's JAX quantization library, used by MaxText and Tunix) does the quantization and
the quantized einsums; zoo only says which modules are projections and checks the inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct, traverse_util

Scheme = Literal["int8", "int4", "fp8"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
# Storage type of each scheme's codes (fp8: the e4m3 format inference uses).
QTYPES = {"int8": jnp.int8, "int4": jnp.int4, "fp8": jnp.float8_e4m3fn}

__all__ = ["SCHEMES", "Scheme", "param_bytes", "quantize", "quantized_model", "projections"]


def projections(params) -> list[str]:
  """Module paths (``"decoder/layers_0/attn/query"``) of the learned projections (a ``kernel``)."""
  flat = traverse_util.flatten_dict(nn.unbox(params), sep="/")
  return sorted({p.rpartition("/")[0] for p in flat if p.rpartition("/")[2] == "kernel"})


def _module_regex(modules: list[str]) -> str:
  """One regular expression matching exactly these module paths (layer indices generalised)."""
  generic = sorted({re.sub(r"_\d+(?=/|$)", "_<n>", m) for m in modules})
  return "|".join(re.escape(g).replace("_<n>", r"_\d+") for g in generic)


@functools.cache
def _castable(cls: type) -> type:
  """qwix's ``WithAux`` whose ``astype`` casts the dequantized dtype (qwix 0.1.8's fails on a
  linen kernel: :class:`~zoo.layers.dense.Einsum` casts its kernel to the compute dtype)."""

  @struct.dataclass
  class Castable(cls):
    def astype(self, dtype):
      return self.replace(array=self.array.astype(dtype))

  return Castable


@functools.cache
def _provider_cls() -> type:
  import qwix  # noqa: PLC0415

  class Provider(qwix.PtqProvider):
    """PTQ whose quantized kernels take ``astype`` (see :func:`_castable`)."""

    def nn_param(self, module, name, *args, **kwargs):
      value = super().nn_param(module, name, *args, **kwargs)
      if isinstance(getattr(value, "array", None), qwix.QArray):
        return _castable(type(value))(array=value.array, how=value.how)
      return value

  return Provider


def _check(scheme: str, tile_size: int | None) -> None:
  if scheme not in SCHEMES:
    raise ValueError(
        f"quantization scheme {scheme!r} is not one zoo applies; choose one of {SCHEMES}."
    )
  if tile_size is not None and (not isinstance(tile_size, int) or tile_size < 1):
    raise ValueError(
        f"tile_size={tile_size!r} must be a positive integer (block length along the contracted "
        "axis) or None (one scale per output channel)."
    )


def quantized_model(model: nn.Module, params, scheme: Scheme = "int8", *,
                    tile_size: int | None = None) -> nn.Module:
  """``model`` with qwix's PTQ provider intercepting the einsums of its projections.

  Args:
    model: a zoo linen model.
    params: its float parameters (boxed or not; only the paths are read).
    scheme: ``"int8"``, ``"int4"`` or ``"fp8"`` (float8 e4m3) weight codes.
    tile_size: None for one scale per output channel, else one scale per block of this many
      entries along the contracted axis (it must divide that axis).

  Returns:
    The intercepted module (same config and inputs).
  """
  import qwix  # noqa: PLC0415  (lazy: ``import zoo`` stays free of qwix)

  _check(scheme, tile_size)
  if getattr(getattr(model, "config", None), "scan_layers", False):
    raise ValueError(
        "scan_layers=True: qwix quantizes the kernel one layer sees inside nn.scan, not the "
        "stacked [L, ...] one; use zoo.quantize (it unscans) or build with scan_layers=False."
    )
  modules = projections(params)
  if not modules:
    raise ValueError(
        f"{type(model).__name__} has no learned projection (no 'kernel' parameter) to quantize."
    )
  rule = qwix.QuantizationRule(
      module_path=_module_regex(modules), op_names=("einsum", "dot_general"),
      weight_qtype=QTYPES[scheme], tile_size=tile_size,
  )
  # Encoder-decoders decode through ``method="encode"`` / ``"decode"``: intercept those too.
  methods = ["__call__"] + [m for m in ("encode", "decode") if callable(getattr(model, m, None))]
  return qwix.quantize_model(model, _provider_cls()([rule]), methods=methods)


def _abstract(qmodel: nn.Module, model: nn.Module):
  """The quantized model's boxed abstract params (qwix's ``WithAux`` leaves name the layout)."""
  from zoo import registry  # noqa: PLC0415

  args, kwargs = registry.family_of(model).dummy_inputs(model.config)
  return jax.eval_shape(lambda: qmodel.init(jax.random.PRNGKey(0), *args, **kwargs))["params"]


def _place_like(qparams, params):
  """Quantized leaves in the float kernel's mesh: codes sharded as the kernel, scales too
  where their axis is not reduced to 1."""
  flat_f = traverse_util.flatten_dict(params, sep="/")
  flat_q = traverse_util.flatten_dict(qparams, sep="/")
  for path, q in flat_q.items():
    sharding = getattr(flat_f.get(path), "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding) or not hasattr(q, "array"):
      continue
    spec = tuple(sharding.spec) + (None,) * (q.array.qvalue.ndim - len(sharding.spec))

    def put(x, spec=spec, sharding=sharding):
      s = [a if n > 1 else None for a, n in zip(spec, x.shape)]
      return jax.device_put(x, sharding.update(spec=jax.sharding.PartitionSpec(*s)))

    flat_q[path] = jax.tree.map(put, q)
  return traverse_util.unflatten_dict(flat_q, sep="/")


def quantize(model: nn.Module, params, scheme: Scheme = "int8", *,
             tile_size: int | None = None) -> tuple[nn.Module, Any]:
  """Weight-only post-training quantization: ``(qmodel, qparams)``.

  Args:
    model: a zoo linen model (``zoo.build`` / ``zoo.from_pretrained``); a scanned one
      (``scan_layers=True``) is quantized in the looped layout, which ``qmodel`` then has.
    params: its float parameters (``nn.unbox``-ed).
    scheme: ``"int8"`` (per-channel int8 codes: about 1/4 of float32), ``"int4"`` or ``"fp8"``.
    tile_size: None = one scale per output channel; an integer = one scale per block of that
      many entries along the contracted axis (finer scales, more accurate int4).

  Returns:
    ``qmodel``, the intercepted module, and ``qparams``: the params tree with each projection
    ``kernel`` a qwix ``WithAux(QArray)`` (codes and scales, in the float kernel's sharding
    when it had one), every other leaf unchanged. ``qmodel.apply({"params": qparams}, ...)``.

  Raises:
    ValueError: an unknown scheme, a bad or indivisible ``tile_size``, a model without
      projections.
  """
  import qwix  # noqa: PLC0415

  params = nn.unbox(params)
  if getattr(getattr(model, "config", None), "scan_layers", False):  # quantize per layer
    from zoo import registry  # noqa: PLC0415
    from zoo.layers.stack import unscan_params  # noqa: PLC0415

    model = registry.build(dataclasses.replace(model.config, scan_layers=False))
    params = unscan_params(params)
  qmodel = quantized_model(model, params, scheme, tile_size=tile_size)
  try:
    abstract = _abstract(qmodel, model)
  except ValueError as e:
    if tile_size is not None and "cannot be tiled" in str(e):
      raise ValueError(
          f"tile_size={tile_size} does not divide the innermost contracted axis of every "
          f"projection ({e}); choose a divisor of d_model, head_dim and mlp_dim."
      ) from None
    raise
  qparams = qwix.quantize_params(params, abstract)
  return qmodel, _place_like(qparams, params)


def param_bytes(params) -> int:
  """Bytes the arrays of ``params`` hold (int4 codes counted at half a byte each)."""
  total = 0.0
  for x in jax.tree.leaves(nn.unbox(params)):
    bits = 4 if x.dtype in (jnp.int4, jnp.uint4) else 8 * np.dtype(x.dtype).itemsize
    total += x.size * bits / 8
  return int(total)
