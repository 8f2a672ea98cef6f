"""Blockwise attention: online softmax over key blocks, flash-style backward, block skipping.

The ``implementation="chunked"`` path of :func:`zoo.layers.attention.dot_product_attention`.
Letters as there (B, T, S, N, K, G = N // K, H), plus ``bq`` / ``bk`` for the query / key block
lengths and ``nq`` / ``nk`` for the numbers of blocks.

Three things make it cheaper than the einsum path at long lengths, none of them changing the
values (they equal the "xla" path to float32 rounding, in value and gradient):

* **Memory.** Only ``[B, N, bq, bk]`` scores exist at a time, forward and backward. The backward
  is written out (``jax.custom_vjp``, the FlashAttention-2 recurrence): it saves the output and
  the row log-sum-exp, ``O(T * N * H)``, and recomputes each block's scores, where autodiff
  through the loops would save ``O(T * N * S / bk)`` carries.
* **Skipped blocks.** A ``[nq, nk]`` table says which (query block, key block) pairs have any
  True in the mask; the others are never computed, forward or backward. For causal
  self-attention that is every key block after the query block (about half the work at long T);
  packed rows (segment masks), unwritten KV-cache slots and padding tails skip too, with no
  flag to pass: the table is read off the boolean mask.
* **Fully masked rows** (a padding query) are the only ones a skipped block could change: the
  einsum path gives them the uniform average of the S values (every logit is ``MASK_VALUE``).
  They are detected from the mask and given exactly that, with its gradient (``1/S`` of the
  row's cotangent to every value, nothing to q, k or the bias).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
f32 = jnp.float32


def _pad_axis(x: Array, axis: int, size: int, value: Any) -> Array:
  """Pads ``axis`` of ``x`` at the end up to ``size`` with ``value``."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _group_heads(x: Array | None, k: int, g: int, tp: int, sp: int, fill: Any) -> Array | None:
  """Mask/bias ``[B', N', T', S']`` -> ``[B', K', G', T', S']`` with T', S' padded to tp, sp.

  Broadcast axes (length 1) stay length 1; padded entries get ``fill``.
  """
  if x is None:
    return None
  bx, nx, tx, sx = x.shape
  x = x.reshape(bx, k, g, tx, sx) if nx > 1 else x[:, :, None]
  if tx > 1:
    x = _pad_axis(x, 3, tp, fill)
  if sx > 1:
    x = _pad_axis(x, 4, sp, fill)
  return x


def _block(x: Array | None, axis: int, start: Array, size: int) -> Array | None:
  """``x[start:start + size]`` along ``axis``; a broadcast (length-1) axis is kept whole."""
  if x is None or x.shape[axis] == 1:
    return x
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis)


def _add_block(total: Array, x: Array, q0: Array, k0: Array) -> Array:
  """``total[..., q0:, k0:] += x`` over the last two axes, summing ``x`` over the axes where
  ``total`` broadcasts (length 1) and starting at 0 on those."""
  axes = tuple(a for a in range(x.ndim) if total.shape[a] == 1 and x.shape[a] != 1)
  x = x.sum(axes, keepdims=True) if axes else x
  starts = [0] * total.ndim
  starts[-2] = q0 if total.shape[-2] > 1 else 0
  starts[-1] = k0 if total.shape[-1] > 1 else 0
  current = jax.lax.dynamic_slice(total, starts, x.shape)
  return jax.lax.dynamic_update_slice(total, current + x.astype(total.dtype), starts)


def _liveness(mask: Array | None, nq: int, nk: int, bq: int, bk: int):
  """``(live [nq, nk] bool, bounds [nq, 2] int32, row_live [B', K', G', T'] bool)`` of a grouped
  mask: which blocks hold any True, the first and one-past-last such key block of each query
  block, and which query rows attend to anything. All None without a mask."""
  if mask is None:
    return None, None, None
  # A mask built from iota (causal_mask) is a constant to XLA, and its constant folder takes
  # minutes over these reductions at T in the thousands; the barrier leaves them to run time
  # (microseconds).
  mask = jax.lax.optimization_barrier(mask)
  tq, sk = mask.shape[3], mask.shape[4]
  m = mask.any(axis=(0, 1, 2))  # [T', S']
  m = m.reshape(nq if tq > 1 else 1, bq if tq > 1 else 1, nk if sk > 1 else 1, bk if sk > 1 else 1)
  live = jnp.broadcast_to(m.any(axis=(1, 3)), (nq, nk))
  first = jnp.argmax(live, axis=1)
  last = nk - jnp.argmax(live[:, ::-1], axis=1)
  any_live = live.any(axis=1)
  bounds = jnp.stack([jnp.where(any_live, first, 0), jnp.where(any_live, last, 0)], axis=1)
  return live, bounds.astype(jnp.int32), mask.any(axis=-1)


def _key_loop(body, carry, i: Array, nk: int, live: Array | None, bounds: Array | None):
  """``carry = body(j, carry)`` for the live key blocks ``j`` of query block ``i``."""
  if live is None:
    return jax.lax.fori_loop(0, nk, body, carry)

  def maybe(j, c):
    return jax.lax.cond(live[i, j], lambda c: body(j, c), lambda c: c, c)

  return jax.lax.fori_loop(bounds[i, 0], bounds[i, 1], maybe, carry)


class _Spec:
  """The static part of a call: lengths, block sizes, scale, mask value (hashable)."""

  def __init__(self, s: int, bq: int, bk: int, nk: int, scale: float, mask_value: float):
    self.s, self.bq, self.bk, self.nk = s, bq, bk, nk
    self.scale, self.mask_value = scale, mask_value
    self._key = (s, bq, bk, nk, scale, mask_value)

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _Spec) and self._key == other._key


def _logits(spec: _Spec, q_i, k_j, mask, bias, q0, k0):
  """Masked float32 logits ``[B, K, G, bq, bk]`` of one block and the real-key flags ``[bk]``."""
  logits = jnp.einsum("BKGTH,BSKH->BKGTS", q_i, k_j, preferred_element_type=f32) * spec.scale
  if bias is not None:
    logits = logits + _block(_block(bias, 3, q0, spec.bq), 4, k0, spec.bk).astype(f32)
  if mask is not None:
    logits = jnp.where(_block(_block(mask, 3, q0, spec.bq), 4, k0, spec.bk), logits,
                       spec.mask_value)
  valid = (k0 + jnp.arange(spec.bk)) < spec.s  # keys past S are padding: weight exactly 0
  return logits, valid


def _forward(spec, q_blocks, key, value, mask, bias, live, bounds, row_live):
  """``(out [nq, B, K, G, bq, H] float32, lse [nq, B, K, G, bq])``."""
  _, b, k, g, bq, h = q_blocks.shape
  bk = spec.bk
  mean_v = value[:, : spec.s].astype(f32).mean(axis=1)[:, :, None, None, :]  # [B, K, 1, 1, H]

  def query_block(args):
    i, q_i = args
    q0 = i * bq

    def body(j, carry):
      m, denom, acc = carry  # [B, K, G, bq], [B, K, G, bq], [B, K, G, bq, H]
      k0 = j * bk
      k_j = jax.lax.dynamic_slice_in_dim(key, k0, bk, 1)
      v_j = jax.lax.dynamic_slice_in_dim(value, k0, bk, 1)
      logits, valid = _logits(spec, q_i, k_j, mask, bias, q0, k0)
      m_new = jnp.maximum(m, jnp.max(jnp.where(valid, logits, spec.mask_value), axis=-1))
      p = jnp.where(valid, jnp.exp(logits - m_new[..., None]), 0.0)
      correction = jnp.exp(m - m_new)
      pv = jnp.einsum("BKGTS,BSKH->BKGTH", p.astype(value.dtype), v_j,
                      preferred_element_type=f32)
      return m_new, denom * correction + p.sum(-1), acc * correction[..., None] + pv

    init = (jnp.full((b, k, g, bq), spec.mask_value, f32), jnp.zeros((b, k, g, bq), f32),
            jnp.zeros((b, k, g, bq, h), f32))
    m, denom, acc = _key_loop(body, init, i, spec.nk, live, bounds)
    safe = jnp.where(denom > 0, denom, 1.0)
    out, lse = acc / safe[..., None], m + jnp.log(safe)
    if row_live is not None:
      rows = jnp.broadcast_to(_block(row_live, 3, q0, bq), (b, k, g, bq))
      out = jnp.where(rows[..., None], out, mean_v)
      lse = jnp.where(rows, lse, 0.0)
    return out, lse

  return jax.lax.map(query_block, (jnp.arange(q_blocks.shape[0]), q_blocks))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(spec, q_blocks, key, value, mask, bias, live, bounds, row_live):
  return _forward(spec, q_blocks, key, value, mask, bias, live, bounds, row_live)[0]


def _attend_fwd(spec, q_blocks, key, value, mask, bias, live, bounds, row_live):
  out, lse = _forward(spec, q_blocks, key, value, mask, bias, live, bounds, row_live)
  return out, (q_blocks, key, value, mask, bias, live, bounds, row_live, out, lse)


# PLR0915: one recurrence, written out as in the paper.
def _attend_bwd(spec, res, d_out):  # noqa: PLR0915
  q_blocks, key, value, mask, bias, live, bounds, row_live, out, lse = res
  nq, b, k, g, bq, h = q_blocks.shape
  bk, cdt = spec.bk, q_blocks.dtype
  d_out = d_out.astype(f32)
  if row_live is not None:
    rows = jnp.broadcast_to(
        row_live.reshape(*row_live.shape[:3], -1, 1 if row_live.shape[3] == 1 else bq)
        .transpose(3, 0, 1, 2, 4), (nq, b, k, g, bq),
    )
    dead = jnp.where(rows[..., None], 0.0, d_out)  # rows that read the mean of v
    d_out = d_out - dead
  delta = jnp.sum(d_out * out, axis=-1)  # [nq, B, K, G, bq]: rowsum(dO * O)

  def query_block(carry, args):
    i, q_i, do_i, lse_i, delta_i = args
    q0 = i * bq
    do_c = do_i.astype(value.dtype)

    def body(j, c):
      dq, dk, dv, dbias = c
      k0 = j * bk
      k_j = jax.lax.dynamic_slice_in_dim(key, k0, bk, 1)
      v_j = jax.lax.dynamic_slice_in_dim(value, k0, bk, 1)
      logits, valid = _logits(spec, q_i, k_j, mask, bias, q0, k0)
      p = jnp.where(valid, jnp.exp(logits - lse_i[..., None]), 0.0)  # the softmax weights
      dv_j = jnp.einsum("BKGTS,BKGTH->BSKH", p.astype(value.dtype), do_c,
                        preferred_element_type=f32)
      dp = jnp.einsum("BKGTH,BSKH->BKGTS", do_c, v_j, preferred_element_type=f32)
      ds = p * (dp - delta_i[..., None])  # d logits
      dq = dq + jnp.einsum("BKGTS,BSKH->BKGTH", ds.astype(cdt), k_j,
                           preferred_element_type=f32) * spec.scale
      dk_j = jnp.einsum("BKGTS,BKGTH->BSKH", ds.astype(cdt), q_i,
                        preferred_element_type=f32) * spec.scale
      dk = jax.lax.dynamic_update_slice_in_dim(
          dk, jax.lax.dynamic_slice_in_dim(dk, k0, bk, 1) + dk_j, k0, 1)
      dv = jax.lax.dynamic_update_slice_in_dim(
          dv, jax.lax.dynamic_slice_in_dim(dv, k0, bk, 1) + dv_j, k0, 1)
      if dbias is not None:
        dbias = _add_block(dbias, ds, q0, k0)
      return dq, dk, dv, dbias

    dk, dv, dbias = carry
    dq, dk, dv, dbias = _key_loop(
        body, (jnp.zeros((b, k, g, bq, h), f32), dk, dv, dbias), i, spec.nk, live, bounds
    )
    return (dk, dv, dbias), dq

  init = (jnp.zeros(key.shape, f32), jnp.zeros(value.shape, f32),
          None if bias is None else jnp.zeros(bias.shape, f32))
  (dk, dv, dbias), dq = jax.lax.scan(
      query_block, init, (jnp.arange(nq), q_blocks, d_out, lse, delta)
  )
  if row_live is not None:  # a fully masked row's output is mean(v[:S]): 1/S to each real key
    per_key = dead.sum(axis=(0, 3, 4)) / spec.s  # [B, K, H]
    dv = dv + jnp.where((jnp.arange(dv.shape[1]) < spec.s)[None, :, None, None],
                        per_key[:, None], 0.0)
  return (dq.astype(cdt), dk.astype(key.dtype), dv.astype(value.dtype), None,
          None if bias is None else dbias.astype(bias.dtype), None, None, None)


_attend.defvjp(_attend_fwd, _attend_bwd)


def blockwise_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None,
    bias: Array | None,
    scale: float,
    chunk_size: int,
    mask_value: float,
) -> Array:
  """softmax(q k^T * scale + bias, masked) v in blocks; the same values as the einsum path.

  Queries are split into blocks of ``bq`` (``lax.map``); for each, a loop over its live key
  blocks of ``bk`` carries the running row max ``m``, denominator and unnormalised output; a
  block's weights are ``exp(logits - m_new)`` and the carried sums are rescaled by
  ``exp(m - m_new)``. Masked logits are set to ``mask_value`` as in the einsum path. T and S are
  padded up to block multiples: padded keys get weight exactly 0 (dropped from the sums, not
  masked), padded query rows are sliced off.

  Args:
    query: ``[B, T, N, H]``.
    key: ``[B, S, K, H]``.
    value: ``[B, S, K, H]``.
    mask: boolean, broadcastable to ``[B, N, T, S]``, or None (no block is skipped then).
    bias: additive logits bias, broadcastable to ``[B, N, T, S]``, or None.
    scale: logits scale.
    chunk_size: query and key block length (min'd with T and S).
    mask_value: the finite value masked logits get.

  Returns:
    ``[B, T, N, H]`` in the value dtype.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size}.")
  b, t, n, h = query.shape
  s, k = key.shape[1], key.shape[2]
  g = n // k
  bq, bk = min(chunk_size, t), min(chunk_size, s)
  nq, nk = -(-t // bq), -(-s // bk)
  tp, sp = nq * bq, nk * bk
  # [nq, B, K, G, bq, H]: the map over query blocks reads its block as a scan input.
  q_blocks = _pad_axis(query, 1, tp, 0).reshape(b, nq, bq, k, g, h).transpose(1, 0, 3, 4, 2, 5)
  key, value = _pad_axis(key, 1, sp, 0), _pad_axis(value, 1, sp, 0)
  mask = _group_heads(mask, k, g, tp, sp, False)
  bias = _group_heads(bias, k, g, tp, sp, 0)
  live, bounds, row_live = _liveness(mask, nq, nk, bq, bk)
  spec = _Spec(s, bq, bk, nk, float(scale), float(mask_value))
  out = _attend(spec, q_blocks, key, value, mask, bias, live, bounds, row_live)
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, tp, n, h)[:, :t]
  return out.astype(value.dtype)
