"""The KV cache as a pytree: allocate it from shapes, find its batch axes, reorder beams.

The cache is whatever the model's ``"cache"`` collection holds (keys/values per layer, write
indices, GPT's position counter). Its layout is read off ``jax.eval_shape`` of the model's
``init`` rather than assumed, so looped (``[B, S, K, H]``) and scanned (``[L, B, S, K, H]``)
stacks both work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def zeros_cache(init_fn: Callable[[int], Any], batch_size: int) -> Any:
  """A zero cache (indices 0) for ``batch_size`` rows.

  Args:
    init_fn: ``batch_size -> variables`` (a ``model.init(..., decode=True)`` call); only its
      shapes are evaluated, nothing runs.
    batch_size: rows.
  """
  shapes = jax.eval_shape(lambda: init_fn(batch_size))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def batch_axes(init_fn: Callable[[int], Any]) -> Any:
  """Per cache leaf, the axis that grows with the batch (-1 for scalars like write indices)."""
  one = jax.eval_shape(lambda: init_fn(1))["cache"]
  two = jax.eval_shape(lambda: init_fn(2))["cache"]

  def axis(a, b):
    diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
    return diff[0] if diff else -1

  return jax.tree.map(axis, one, two)


def take_rows(cache: Any, axes: Any, rows: Array) -> Any:
  """``cache`` with its batch rows replaced by ``cache[rows]`` (beam reordering)."""
  return jax.tree.map(lambda x, a: x if a < 0 else jnp.take(x, rows, axis=a), cache, axes)
