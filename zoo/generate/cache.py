"""The KV cache as a pytree: find its batch axes, reorder beams.

The cache is whatever the model's ``"cache"`` collection holds (keys/values per layer, write
indices, position counters); a family's capability (``zoo.registry.CausalLM`` /
``Seq2Seq.init_cache``) allocates it. Its batch axes are read off ``jax.eval_shape`` of that
allocation rather than assumed, so looped (``[B, S, K, H]``) and scanned (``[L, B, S, K, H]``)
stacks both work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def batch_axes(cache_fn: Callable[[int], Any]) -> Any:
  """Per cache leaf, the axis that grows with the batch (-1 for scalars like write indices).

  Args:
    cache_fn: ``batch_size -> cache``; only its shapes are evaluated, nothing runs.
  """
  one = jax.eval_shape(lambda: cache_fn(1))
  two = jax.eval_shape(lambda: cache_fn(2))

  def axis(a, b):
    diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
    return diff[0] if diff else -1

  return jax.tree.map(axis, one, two)


def take_rows(cache: Any, axes: Any, rows: Array) -> Any:
  """``cache`` with its batch rows replaced by ``cache[rows]`` (beam reordering)."""
  return jax.tree.map(lambda x, a: x if a < 0 else jnp.take(x, rows, axis=a), cache, axes)
