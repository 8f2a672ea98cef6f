"""The quantized frozen base of QLoRA (Dettmers et al. 2023): kernels as qwix codes + scales.

A frozen projection kernel ``[*in, *out]`` becomes ``{"codes": ..., "scale": ...}`` in the
parameter tree: qwix quantizes it (``nf4``: NormalFloat-4 with one absmax scale per block of
:data:`BLOCK` entries along the last contracted axis; ``int8``: one scale per output channel)
and dequantizes it inside the forward pass, where the LoRA adapters are added. The codes are
held in bfloat16, which represents integers up to 256 exactly, because the train step
differentiates the whole parameter tree and ``jax.grad`` refuses integer leaves (float8 has no
promotion to the float32 gradient norm): nf4 packs two 4-bit codes per element along the last
(output) axis, 1 byte per weight; int8 takes one element, 2 bytes per weight. Their gradient is
stopped and their update is zero, so they never change. Nothing here imports the training
code: the workdir reader uses it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

BaseQuant = Literal["", "nf4", "int8"]
BASE_QUANTS: tuple[str, ...] = get_args(BaseQuant)
BLOCK = 64  # nf4 block length (the QLoRA paper's)
CODES, SCALE = "codes", "scale"
STORE = jnp.bfloat16  # the container of the codes
# Logical code type, and the integer type qwix gives and takes.
_QTYPE = {"nf4": "nf4", "int8": jnp.int8}
_QVALUE = {"nf4": jnp.uint4, "int8": jnp.int8}


def _layout(shape: tuple, last_in: int, scheme: str) -> tuple[tuple, dict]:
  """``(channelwise_axes, tiled_axes)`` of a kernel whose last contracted axis is ``last_in``."""
  tiled = {}
  if scheme == "nf4":
    tiled = {last_in: BLOCK if shape[last_in] % BLOCK == 0 else shape[last_in]}
  channelwise = tuple(a for a in range(len(shape)) if a not in tiled and a != last_in)
  return channelwise, tiled


def quantize_kernel(kernel, scheme: str, last_in: int) -> dict[str, Any]:
  """``{"codes", "scale"}`` of one float kernel (``last_in``: its last contracted axis)."""
  import qwix  # noqa: PLC0415

  channelwise, tiled = _layout(tuple(kernel.shape), last_in, scheme)
  if scheme == "nf4" and kernel.shape[-1] % 2:
    raise ValueError(
        f"nf4 packs two codes per element along a kernel's last axis; a kernel of shape "
        f"{tuple(kernel.shape)} has an odd one: use lora.base_quant='int8' for this model."
    )
  q = qwix.quantize(jnp.asarray(kernel, jnp.float32), _QTYPE[scheme],
                    channelwise_axes=channelwise, tiled_axes=tiled)
  codes = q.qvalue.astype(jnp.int32)
  if scheme == "nf4":  # code pairs (even, odd output index) as 16 * even + odd
    codes = codes[..., 0::2] * 16 + codes[..., 1::2]
  return {CODES: codes.astype(STORE), SCALE: q.scale}


def scale_names(names: tuple, last_in: int, scheme: str, shape: tuple) -> tuple:
  """Logical axis names of the scale: the kernel's, None where an axis is reduced."""
  channelwise, _ = _layout(shape, last_in, scheme)
  return tuple(n if a in channelwise else None for a, n in enumerate(names))


def scheme_of(codes_shape: tuple, scale_shape: tuple) -> str:
  """nf4 codes come in pairs along the last axis, where the scale has one per output."""
  return "nf4" if codes_shape[-1] != scale_shape[-1] else "int8"


def last_in_axis(codes_shape: tuple, scale_shape: tuple) -> int:
  """The kernel axis whose scale is reduced (blocks or one per channel): the last contracted."""
  return next(a for a, (c, s) in enumerate(zip(codes_shape[:-1], scale_shape)) if c != s)


def dequantize_kernel(q: dict[str, Any], dtype=jnp.float32):
  """The float kernel of ``{"codes", "scale"}`` (qwix's dequantization, exact codes)."""
  import qwix  # noqa: PLC0415

  scheme = scheme_of(q[CODES].shape, q[SCALE].shape)
  codes = q[CODES].astype(jnp.int32)
  if scheme == "nf4":
    codes = jnp.stack([codes // 16, codes % 16], axis=-1).reshape(*codes.shape[:-1], -1)
  qvalue = codes.astype(_QVALUE[scheme])
  scale = jnp.asarray(q[SCALE], jnp.float32)
  return qwix.dequantize(qwix.QArray(qvalue, scale, qtype=_QTYPE[scheme])).astype(dtype)


def is_quantized(value) -> bool:
  return isinstance(value, dict) and set(value) == {CODES, SCALE}


def dequantize_base(params):
  """``params`` with every quantized kernel dequantized to float32 (others unchanged)."""
  flat = traverse_util.flatten_dict(nn.unbox(params), sep="/", is_leaf=lambda _, v: is_quantized(v))
  if not any(is_quantized(v) for v in flat.values()):
    return params
  out = {p: dequantize_kernel(v) if is_quantized(v) else v for p, v in flat.items()}
  return traverse_util.unflatten_dict(out, sep="/")
