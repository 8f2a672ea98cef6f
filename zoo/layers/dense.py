"""The one learned projection every layer uses: :class:`Einsum`, a kernel applied by an einsum.

The equation documents the shapes where the projection is used (B batch, T length, D model
width, N heads, H head dim, F mlp width, V vocabulary)::

  Einsum((D, N, H), (EMBED, HEADS, HEAD_DIM))("BTD,DNH->BTNH", x)  # a heads projection
  Einsum((N, H, D), (HEADS, HEAD_DIM, EMBED))("BTNH,NHD->BTD", y)  # the output projection
  Einsum((D, F), (EMBED, MLP))("...D,DF->...F", x)                 # a plain dense layer

Compute dtype, storage dtype, initialisation (fan-in over every contracted axis), the bias
and the logical axis names of both parameters are handled here once.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array


def fan_in_init(init: Any, num_in_axes: int) -> Any:
  """An initializer for an ``[*in, *out]`` kernel with fan-in ``prod(in)``, fan-out ``prod(out)``.

  ``nn.initializers`` read fan-in from the second-to-last axis, so a ``[D, N, H]`` query kernel
  would get fan-in N. Initialising the ``[prod(in), prod(out)]`` matrix and reshaping gives a
  multi-axis kernel the distribution of the plain dense layer it is a reshaping of.
  """

  def init_fn(rng, shape, dtype=jnp.float32):
    fan_in = math.prod(shape[:num_in_axes])
    return init(rng, (fan_in, math.prod(shape[num_in_axes:])), dtype).reshape(shape)

  return init_fn


def _kernel_split(eqn: str, rank: int, use_bias: bool) -> int:
  """Number of contracted kernel axes in ``"<x>,<kernel>-><out>"``; checks the layout."""
  try:
    lhs, out = eqn.replace(" ", "").split("->")
    x_axes, kernel_axes = lhs.split(",")
  except ValueError:
    raise ValueError(f"Einsum needs an equation '<x>,<kernel>-><out>'; got {eqn!r}.") from None
  if len(kernel_axes) != rank:
    raise ValueError(
        f"equation {eqn!r} names {len(kernel_axes)} kernel axes; the kernel has {rank}."
    )
  contracted = [a in x_axes for a in kernel_axes]
  n_in = contracted.index(False) if False in contracted else rank
  free = kernel_axes[n_in:]
  # [in..., out...]: fan-in is the product of the leading axes, and the bias (over the output
  # axes) broadcasts against the end of the result.
  if any(contracted[n_in:]) or any(a in out for a in kernel_axes[:n_in]):
    raise ValueError(
        f"equation {eqn!r}: the kernel must be [contracted axes..., output axes...] with the "
        "contracted axes absent from the output."
    )
  if use_bias and not out.endswith(free):
    raise ValueError(f"equation {eqn!r}: a bias over {free!r} needs the output to end with them.")
  return n_in


class Einsum(nn.Module):
  """A learned kernel (plus an optional bias) applied to ``x`` by an einsum equation.

  The kernel's leading axes are contracted with ``x`` and its remaining axes are the output
  features, which end the result; the bias has the shape of those output axes.

  Attributes:
    shape: kernel shape, contracted axes first (``(D, N, H)``).
    kernel_axes: logical axis name (``zoo.sharding``) of each kernel axis; the bias takes
      the output ones.
    use_bias: add a bias over the output axes.
    dtype: compute dtype (input, kernel and bias are cast to it).
    param_dtype: storage dtype of kernel and bias.
    kernel_init: a 2-D initializer, applied to the ``[prod(in), prod(out)]`` matrix.
    bias_init: initializer of the bias.
  """

  shape: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, eqn: str, x: Array) -> Array:
    """``jnp.einsum(eqn, x, kernel) + bias`` in the compute dtype.

    Args:
      eqn: ``"<x>,<kernel>-><out>"``, e.g. ``"BTD,DNH->BTNH"``.
      x: the input, with the contracted axes' sizes equal to the kernel's.

    Returns:
      The einsum's output, in ``dtype``.
    """
    shape = tuple(self.shape)
    if len(self.kernel_axes) != len(shape):
      raise ValueError(
          f"kernel_axes {self.kernel_axes} name {len(self.kernel_axes)} axes; the kernel shape "
          f"{shape} has {len(shape)}."
      )
    n_in = _kernel_split(eqn, len(shape), self.use_bias)
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(fan_in_init(self.kernel_init, n_in), self.kernel_axes),
        shape,
        self.param_dtype,
    )
    y = jnp.einsum(eqn, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param(
          "bias",
          nn.with_logical_partitioning(self.bias_init, self.kernel_axes[n_in:]),
          shape[n_in:],
          self.param_dtype,
      )
      y = y + bias.astype(self.dtype)
    return y
