"""LayerNorm and RMSNorm with their gradients written out.

The forward pass is flax's (``nn.LayerNorm(use_fast_variance=False)`` / ``nn.RMSNorm``, the
same parameter names ``scale`` and ``bias``, statistics in float32). The backward is a
``jax.custom_vjp``:

  x̂ = (x - mean) * r,  r = 1 / sqrt(var + eps),  y = x̂ * scale + bias
  d bias = Σ_rows dy,  d scale = Σ_rows dy * x̂
  dx = r * (g - mean_D(g) - x̂ * mean_D(g * x̂)),  g = dy * scale

with the two sums over rows written as products with a ones vector (``einsum('BL,BLD->D')``).
Left to autodiff, XLA:CPU lowered those column sums, fused with the residual stream's gradient,
into transposed ``[D, B*L]`` copies: about 2.4 s of the 16.5 s GPT-2 train step
(BENCHMARKS.md). RMSNorm is the same without the mean and the bias.
"""

from __future__ import annotations

import functools
import string
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import sharding as sh

Array = jax.Array


def _column_sum(x: Array) -> Array:
  """``x [..., D]`` summed over every leading axis, as a dot with a ones vector: ``[D]``."""
  rows = string.ascii_letters[: x.ndim - 1]
  ones = jnp.ones(x.shape[:-1], x.dtype)
  return jnp.einsum(f"{rows},{rows}z->z", ones, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalize(x: Array, scale: Array, bias: Array | None, eps: float, center: bool) -> Array:
  return _normalize_fwd(x, scale, bias, eps, center)[0]


def _normalize_fwd(x, scale, bias, eps, center):
  x32 = x.astype(jnp.float32)
  if center:
    x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
  r = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  x_hat = x32 * r
  y = x_hat * scale.astype(jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y, (x_hat, r, scale, bias, jnp.zeros((), x.dtype))  # the last: x's dtype


def _normalize_bwd(eps, center, res, dy):
  x_hat, r, scale, bias, x_like = res
  dy = dy.astype(jnp.float32)
  g = dy * scale.astype(jnp.float32)
  dx = g - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True)
  if center:
    dx = dx - jnp.mean(g, axis=-1, keepdims=True)
  d_scale = _column_sum(dy * x_hat).astype(scale.dtype)
  d_bias = None if bias is None else _column_sum(dy).astype(bias.dtype)
  return (r * dx).astype(x_like.dtype), d_scale, d_bias


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis, float32 out."""
  return _normalize(x, scale, bias, float(eps), True)


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
  """``x / sqrt(mean(x²) + eps) * scale`` over the last axis, float32 out."""
  return _normalize(x, scale, None, float(eps), False)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis; parameters ``scale`` and ``bias`` ``[D]`` (logical NORM)."""

  epsilon: float = 1e-6
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``[..., D]`` -> ``[..., D]`` float32."""
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (sh.NORM,)),
                       (d,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (sh.NORM,)),
                      (d,), self.param_dtype)
    return layer_norm(x, scale, bias, self.epsilon)


class RMSNorm(nn.Module):
  """RMSNorm over the last axis; parameter ``scale`` ``[D]`` (logical NORM).

  The normalised input is multiplied by ``scale_offset + scale`` in float32: Gemma stores
  ``scale`` around 0 and multiplies by ``1 + scale`` (``scale_offset=1``, zeros at init).
  """

  epsilon: float = 1e-6
  param_dtype: Any = jnp.float32
  scale_offset: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``[..., D]`` -> ``[..., D]`` float32."""
    init = nn.initializers.zeros if self.scale_offset else nn.initializers.ones
    scale = self.param("scale", nn.with_logical_partitioning(init, (sh.NORM,)),
                       (x.shape[-1],), self.param_dtype)
    if self.scale_offset:
      scale = scale.astype(jnp.float32) + self.scale_offset
    return rms_norm(x, scale, self.epsilon)
