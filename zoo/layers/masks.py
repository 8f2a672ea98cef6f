"""Boolean attention masks, True = attend, broadcastable to ``[B, N, T, S]``.

Built once at the top of a model from ids (padding, causal, segments of packed sequences) and
combined with ``&``; :func:`~zoo.layers.attention.dot_product_attention` applies them with
:data:`MASK_VALUE`. Letters: B batch, N heads, T query length, S key length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Masked logits get this value instead of -inf: a fully masked row then becomes a uniform
# softmax (finite output, finite gradient) rather than 0/0 = NaN. It is far below any real
# logit yet leaves float32 headroom for an added bias.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def valid_from_ids(ids: Array, pad_id: int = 0) -> Array:
  """``[B, L]`` token ids -> ``[B, L]`` bool, True where the token is not padding."""
  return jnp.asarray(ids) != pad_id


def valid_from_lengths(lengths: Array, length: int) -> Array:
  """``[B]`` lengths -> ``[B, length]`` bool, True for the first ``lengths[b]`` positions."""
  return jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]


def padding_mask(q_valid: Array, kv_valid: Array | None = None) -> Array:
  """Query validity ``[B, T]`` x key validity ``[B, S]`` -> ``[B, 1, T, S]``.

  With ``kv_valid`` None this is a self-attention padding mask; with both given it is the
  cross-attention mask (decoder queries over encoder keys).
  """
  kv_valid = q_valid if kv_valid is None else kv_valid
  return q_valid[:, None, :, None] & kv_valid[:, None, None, :]


def causal_mask(length: int, kv_length: int | None = None) -> Array:
  """``[1, 1, T, S]``: query t attends to keys at or before it.

  With ``kv_length > length`` the queries are taken to be the last ``length`` positions
  (a chunk appended after ``kv_length - length`` earlier keys).
  """
  kv_length = length if kv_length is None else kv_length
  q_pos = jnp.arange(length) + (kv_length - length)
  return (q_pos[:, None] >= jnp.arange(kv_length)[None, :])[None, None]


def causal_mask_from_positions(q_positions: Array, kv_positions: Array | None = None) -> Array:
  """Positions ``[B, T]`` and ``[B, S]`` -> ``[B, 1, T, S]``, True where key pos <= query pos.

  Used for packed sequences (with :func:`segment_mask`) and for decoding with a cache.
  """
  kv_positions = q_positions if kv_positions is None else kv_positions
  return q_positions[:, None, :, None] >= kv_positions[:, None, None, :]


def sliding_window_mask(q_slots: Array, kv_slots: Array, window: int) -> Array:
  """Slots ``[T]`` and ``[S]`` -> ``[1, 1, T, S]``: True where the key is fewer than ``window``
  slots before the query (Mistral: each token sees itself and ``window - 1`` earlier ones).

  Combine with a causal mask; it only bounds how far back a query reads. Slots are sequence
  (or cache) indices, as Hugging Face counts them, so left padding counts towards the window.
  """
  return (jnp.asarray(q_slots)[:, None] - jnp.asarray(kv_slots)[None, :] < window)[None, None]


def segment_mask(q_segment_ids: Array, kv_segment_ids: Array | None = None) -> Array:
  """Segment ids ``[B, T]``, ``[B, S]`` -> ``[B, 1, T, S]``: attend only within a segment."""
  kv_segment_ids = q_segment_ids if kv_segment_ids is None else kv_segment_ids
  return q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]


def combine_masks(*masks: Array | None) -> Array | None:
  """Logical AND of the masks that are not None (None if all are)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = out & m
  return out
