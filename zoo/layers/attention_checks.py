"""Argument checks of :func:`zoo.layers.attention.dot_product_attention` and of a cached
:class:`zoo.layers.attention.MultiHeadAttention` call.

They read shapes and dtypes only, so they run before anything is computed (and under ``jit``),
and each error names the numbers that disagree. Letters: B batch, T query length, S key length,
N query heads, K key/value heads, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def check_inputs(
    query: Array, key: Array, value: Array, mask: Array | None, bias: Array | None
) -> None:
  """q ``[B, T, N, H]``, k / v ``[B, S, K, H]`` with K dividing N; a boolean ``mask`` and a
  ``bias``, each broadcastable to ``[B, N, T, S]``."""
  _check_qkv(query, key, value)
  b, t, n, _ = query.shape
  s = key.shape[1]
  _check_broadcastable("mask", mask, (b, n, t, s))
  _check_broadcastable("bias", bias, (b, n, t, s))
  if mask is not None and mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be boolean (True = attend); got dtype {mask.dtype}.")


def _check_broadcastable(name: str, x: Array | None, target: tuple[int, ...]) -> None:
  if x is None:
    return
  if x.ndim != 4:
    raise ValueError(
        f"{name} must have rank 4, broadcastable to [B, N, T, S] = {list(target)}; got shape "
        f"{tuple(x.shape)}. Build masks with zoo.layers.masks.padding_mask / causal_mask, "
        "or add the missing axes (e.g. mask[:, None, None, :] for a [B, S] key mask)."
    )
  for got, want in zip(x.shape, target):
    if got not in (1, want):
      raise ValueError(
          f"{name} of shape {tuple(x.shape)} does not broadcast to [B, N, T, S] = {list(target)}."
      )


def _check_qkv(query: Array, key: Array, value: Array) -> None:
  for name, x in (("query", query), ("key", key), ("value", value)):
    if x.ndim != 4:
      raise ValueError(
          f"{name} must be [batch, length, heads, head_dim] (rank 4); got shape {tuple(x.shape)}."
      )
  if key.shape != value.shape:
    raise ValueError(f"key and value shapes differ: {tuple(key.shape)} vs {tuple(value.shape)}.")
  if query.shape[-1] != key.shape[-1]:
    raise ValueError(
        f"query head dim {query.shape[-1]} differs from key head dim {key.shape[-1]} "
        f"(query {tuple(query.shape)}, key {tuple(key.shape)}); q and k must share H."
    )
  if query.shape[0] != key.shape[0]:
    raise ValueError(f"batch sizes differ: query {query.shape[0]}, key {key.shape[0]}.")
  n, k = query.shape[2], key.shape[2]
  if n % k:
    raise ValueError(
        f"query heads N={n} must be a multiple of key/value heads K={k} "
        f"(MHA: K=N, grouped-query: K divides N, multi-query: K=1)."
    )


def check_decode_bias(bias: Array | None, t: int, max_len: int) -> None:
  """A bias for a cached call must cover this call's T query rows and all max_len cache slots."""
  if bias is None or bias.ndim != 4:
    return  # dot_product_attention reports the rank
  if bias.shape[2] not in (1, t) or bias.shape[3] not in (1, max_len):
    raise ValueError(
        f"decoding with a KV cache, bias must broadcast to [B, N, T, max_len] = [B, N, {t}, "
        f"{max_len}]: rows for this call's {t} new query tokens, columns for every cache slot "
        f"0..{max_len - 1} (not only the ones written so far); got shape {tuple(bias.shape)}."
    )
