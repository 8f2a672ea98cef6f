"""Linear + cross entropy over token blocks: the loss of an output head without its logits.

A language model's last matmul makes ``[B, L, V]`` float32 logits, and autodiff keeps them and
their gradient: 1.6 GB for GPT-2 at B=8, L=1024, 16.8 GB for Llama-3's 128,256-token vocabulary
at L=4096. :func:`linear_cross_entropy` fuses the projection with the loss (Cut Cross-Entropy,
Wijmans et al. 2024; Liger's fused linear cross entropy): a ``lax.scan`` over blocks of
positions computes one block's logits at a time and keeps per row only the log-sum-exp, the
label's logit, the mean logit (label smoothing) and the argmax. The backward (``custom_vjp``)
recomputes each block's logits from the saved hidden states and log-sum-exp and accumulates
``d weight`` and ``d bias`` across blocks; ``d hidden`` is made block by block.

Values equal :func:`zoo.tasks.losses.cross_entropy` on the full logits (same label smoothing,
float32 logits and statistics whatever the compute dtype). Blocks cut the length axis and keep
the leading (batch) axes whole, so a batch sharded over ``data``/``fsdp`` stays sharded and a
vocabulary sharded over ``tensor`` is reduced by XLA's partitioner. One block covers the whole
vocabulary: with blocks sized to :data:`BLOCK_ELEMENTS` logits, a second loop over vocabulary
blocks would save no memory worth its online-softmax bookkeeping.

A model hands the loss a :class:`Projection` (``__call__(..., return_projection=True)``)
instead of logits. Shapes: B batch, L length, D width, V vocabulary, N rows, ``bt`` positions
in a block.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array
f32 = jnp.float32

# Logits a block holds (over the whole batch) when ``block_size`` is left to choose:
# 2**25 float32 values = 128 MiB, e.g. [8, 64, 50257] for GPT-2 at batch 8.
BLOCK_ELEMENTS = 2**25
# Labels that are not predicted (``zoo.data.batch.IGNORE_INDEX``, PyTorch's default too).
IGNORE_INDEX = -100


@struct.dataclass(kw_only=True)
class Projection:
  """What an output head gives a loss instead of its logits.

  ``logits = (hidden * scale) @ weight + bias`` for a ``[D, V]`` kernel, ``(hidden * scale) @
  weight.T + bias`` for a ``[V, D]`` token table (``transposed``, a tied head); the matmul runs
  in ``dtype`` with float32 results.

  Attributes:
    hidden: ``[..., D]`` the head's input (``[B, L, D]``).
    weight: ``[D, V]`` kernel, or ``[V, D]`` table when ``transposed``.
    bias: ``[V]`` added to the logits, or None.
    transposed: ``weight`` is a ``[V, D]`` table.
    scale: multiplies ``hidden`` (in ``dtype``) before the matmul (T5's ``d_model**-0.5``).
    dtype: compute dtype of the matmul.
  """

  hidden: Array
  weight: Array
  bias: Array | None = None
  transposed: bool = struct.field(pytree_node=False, default=False)
  scale: float | None = struct.field(pytree_node=False, default=None)
  dtype: Any = struct.field(pytree_node=False, default=jnp.float32)

  @property
  def vocab_size(self) -> int:
    return self.weight.shape[0 if self.transposed else 1]

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape of the logits it stands for, ``[..., V]``."""
    return (*self.hidden.shape[:-1], self.vocab_size)

  def logits(self) -> Array:
    """The full ``[..., V]`` float32 logits (what the head returns by default)."""
    return _logits(self.hidden, self.weight, self.bias, self._static())

  def _static(self, **kw) -> _Static:
    return _Static(self.transposed, self.scale, jnp.dtype(self.dtype), **kw)


class _Static(NamedTuple):
  transposed: bool
  scale: float | None
  dtype: Any
  label_smoothing: float = 0.0
  z_loss: float = 0.0
  block: int = 1


def fused_cross_entropy(
    projection: Projection, labels: Array, *, label_smoothing: float = 0.0,
    z_loss: float = 0.0, block_size: int | None = None,
) -> tuple[Array, Array, Array]:
  """:func:`linear_cross_entropy` of a head's :class:`Projection`."""
  p = projection
  return linear_cross_entropy(
      p.hidden, p.weight, labels, bias=p.bias, scale=p.scale, transposed=p.transposed,
      dtype=p.dtype, label_smoothing=label_smoothing, z_loss=z_loss, block_size=block_size,
  )


def linear_cross_entropy(
    hidden: Array, weight: Array, labels: Array, *, bias: Array | None = None,
    scale: float | None = None, transposed: bool = False, dtype: Any = None,
    label_smoothing: float = 0.0, z_loss: float = 0.0, block_size: int | None = None,
) -> tuple[Array, Array, Array]:
  """Per-row cross entropy of ``(hidden * scale) @ weight + bias``, one block of logits at a time.

  Args:
    hidden: ``[..., L, D]`` (``[N, D]`` or ``[B, L, D]``), any float dtype.
    weight: ``[D, V]`` kernel, or ``[V, D]`` token table with ``transposed=True``.
    labels: ``[..., L]`` int labels; :data:`IGNORE_INDEX` rows give 0 and no gradient.
    bias: optional ``[V]`` added to the logits.
    scale: optional factor on ``hidden`` before the matmul.
    transposed: ``weight`` is ``[V, D]`` (a tied embedding table).
    dtype: compute dtype of the matmuls (default: ``hidden``'s); logits, softmax statistics and
      gradient accumulators are float32 regardless.
    label_smoothing: epsilon of :func:`zoo.tasks.losses.cross_entropy`: the loss is ``(1 - eps)
      * nll + eps * (lse - mean(logits))``.
    z_loss: coefficient of ``lse**2`` added to the loss (PaLM, Chowdhery et al. 2022: keeps the
      log-normaliser near 0); 0 = off. ``nll`` never includes it.
    block_size: positions of the length axis per block (blocks hold ``[..., block_size, V]``
      logits); None picks the largest power of two whose block holds at most
      :data:`BLOCK_ELEMENTS` logits. Need not divide ``L``.

  Returns:
    ``(loss, nll, correct)``, each ``[..., L]`` float32: the training loss, the label's negative
    log-likelihood and whether the argmax is the label; 0 where ``labels == IGNORE_INDEX``.

  Raises:
    ValueError: shapes that disagree, or an out-of-range option.
  """
  dtype = jnp.dtype(hidden.dtype if dtype is None else dtype)
  _check(hidden, weight, labels, bias, transposed)
  _check_options(label_smoothing, z_loss, block_size)
  vocab = weight.shape[0 if transposed else 1]
  length = hidden.shape[-2]
  rows = math.prod(hidden.shape[:-2])
  block = _block_size(block_size, rows, length, vocab)
  static = _Static(bool(transposed), None if scale is None else float(scale), dtype,
                   float(label_smoothing), float(z_loss), block)
  return _fused(hidden, weight, bias, labels.astype(jnp.int32), static)


def _check(hidden, weight, labels, bias, transposed) -> None:
  if hidden.ndim < 2:
    raise ValueError(f"hidden must be [..., L, D] (rank >= 2); got shape {hidden.shape}.")
  if weight.ndim != 2:
    raise ValueError(f"weight must be a [D, V] kernel or [V, D] table; got shape {weight.shape}.")
  d = hidden.shape[-1]
  w_d = weight.shape[1 if transposed else 0]
  if w_d != d:
    layout = "[V, D] (transposed=True)" if transposed else "[D, V]"
    raise ValueError(
        f"weight {weight.shape} read as {layout} has D={w_d} but hidden {hidden.shape} has "
        f"D={d}; pass transposed={not transposed} for the other layout or fix the shapes."
    )
  if labels.shape != hidden.shape[:-1]:
    raise ValueError(
        f"labels {labels.shape} must be hidden's shape without its last axis, "
        f"{hidden.shape[:-1]}."
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer ids; got dtype {labels.dtype}.")
  vocab = weight.shape[0 if transposed else 1]
  if bias is not None and bias.shape != (vocab,):
    raise ValueError(f"bias must be [V] = ({vocab},); got shape {bias.shape}.")


def _check_options(label_smoothing, z_loss, block_size) -> None:
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1); 0 = off.")
  if not z_loss >= 0.0:
    raise ValueError(f"z_loss={z_loss!r} must be >= 0 (PaLM used 1e-4); 0 = off.")
  if block_size is not None and (
      isinstance(block_size, bool) or not isinstance(block_size, int | np.integer)
      or block_size < 1
  ):
    raise ValueError(
        f"block_size={block_size!r} must be a positive int (positions per block) or None "
        "(automatic)."
    )


def _block_size(block_size: int | None, rows: int, length: int, vocab: int) -> int:
  if block_size is None:
    fit = max(1, BLOCK_ELEMENTS // max(1, rows * vocab))
    block_size = 1 << (fit.bit_length() - 1)  # a power of two: divides the usual lengths
  return max(1, min(int(block_size), length))


# ----------------------------------------------------------------------------------------------
# One block.


def _scaled(h: Array, st: _Static) -> Array:
  h = h.astype(st.dtype)
  return h if st.scale is None else h * jnp.asarray(st.scale, st.dtype)


def _logits(h, weight, bias, st: _Static) -> Array:
  """``[..., D]`` -> ``[..., V]`` float32 logits."""
  eqn = "...D,VD->...V" if st.transposed else "...D,DV->...V"
  logits = jnp.einsum(eqn, _scaled(h, st), weight.astype(st.dtype), preferred_element_type=f32)
  return logits if bias is None else logits + bias.astype(f32)


def _label_mask(logits: Array, labels: Array) -> Array:
  """One-hot ``[..., V]`` bool of the labels (an iota compare: partitions over a sharded V)."""
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return iota == labels[..., None]


def _row_stats(logits: Array, labels: Array, st: _Static):
  """``(loss, nll, correct, lse)`` ``[...]`` of one block's logits ``[..., V]``."""
  valid = labels != IGNORE_INDEX
  safe = jnp.where(valid, labels, 0)
  lse = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.sum(jnp.where(_label_mask(logits, safe), logits, 0.0), axis=-1)
  nll = lse - label_logit
  loss = nll
  if st.label_smoothing:  # -mean(log p) = lse - mean(logits)
    eps = st.label_smoothing
    loss = (1.0 - eps) * nll + eps * (lse - jnp.mean(logits, axis=-1))
  if st.z_loss:
    loss = loss + st.z_loss * jnp.square(lse)
  correct = (jnp.argmax(logits, axis=-1) == safe).astype(f32)
  zero = jnp.zeros_like(nll)
  return tuple(jnp.where(valid, v, zero) for v in (loss, nll, correct)) + (lse,)


def _dlogits(logits, labels, lse, g_loss, g_nll, st: _Static) -> Array:
  """``d (loss . g_loss + nll . g_nll) / d logits``, ``[..., V]`` float32."""
  valid = labels != IGNORE_INDEX
  g_loss = jnp.where(valid, g_loss, 0.0)
  g_nll = jnp.where(valid, g_nll, 0.0)
  eps = st.label_smoothing
  # d loss = softmax (1 + 2 z lse) - (1 - eps) one_hot - eps / V;  d nll = softmax - one_hot.
  g_soft = g_loss * (1.0 + 2.0 * st.z_loss * lse) + g_nll
  g_hot = (1.0 - eps) * g_loss + g_nll
  probs = jnp.exp(logits - lse[..., None])
  hot = _label_mask(logits, jnp.where(valid, labels, 0))
  d = probs * g_soft[..., None] - jnp.where(hot, g_hot[..., None], 0.0)
  if eps:
    d = d - (eps / logits.shape[-1]) * g_loss[..., None]
  return d


# ----------------------------------------------------------------------------------------------
# Blocks of the length axis (the leading axes stay whole).


def _to_blocks(x: Array, axis: int, st: _Static, fill) -> Array:
  """``x`` with ``axis`` (the length) padded to whole blocks and split: ``[nb, ..., bt, ...]``."""
  length = x.shape[axis]
  nb = -(-length // st.block)
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, nb * st.block - length)
  x = jnp.pad(x, widths, constant_values=fill)
  x = x.reshape(*x.shape[:axis], nb, st.block, *x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _from_blocks(x: Array, axis: int, length: int) -> Array:
  """Inverse of :func:`_to_blocks` (``axis`` counted in the unblocked array)."""
  x = jnp.moveaxis(x, 0, axis)
  x = x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])
  return jax.lax.slice_in_dim(x, 0, length, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(hidden, weight, bias, labels, st):
  return _fused_fwd(hidden, weight, bias, labels, st)[0]


def _fused_fwd(hidden, weight, bias, labels, st: _Static):
  axis = labels.ndim - 1  # the length axis of labels, and of hidden

  def body(_, xs):
    h, lab = xs
    return None, _row_stats(_logits(h, weight, bias, st), lab, st)

  xs = (_to_blocks(hidden, axis, st, 0), _to_blocks(labels, axis, st, IGNORE_INDEX))
  _, stats = jax.lax.scan(body, None, xs)
  loss, nll, correct, lse = (_from_blocks(s, axis, labels.shape[-1]) for s in stats)
  return (loss, nll, correct), (hidden, weight, bias, labels, lse)


def _fused_bwd(st: _Static, res, cotangents):
  hidden, weight, bias, labels, lse = res
  g_loss, g_nll, _ = cotangents  # correct has no gradient
  axis = labels.ndim - 1
  lead = tuple(range(axis + 1))  # the batch axes and the block's positions

  def body(carry, xs):
    d_weight, d_bias = carry
    h, lab, lse_b, gl, gn = xs
    d = _dlogits(_logits(h, weight, bias, st), lab, lse_b, gl, gn, st)
    hs, dc = _scaled(h, st), d.astype(st.dtype)
    eqn = "...V,VD->...D" if st.transposed else "...V,DV->...D"
    d_h = jnp.einsum(eqn, dc, weight.astype(st.dtype), preferred_element_type=f32)
    if st.scale is not None:
      d_h = d_h * st.scale
    pair = (dc, hs) if st.transposed else (hs, dc)  # [V, D] or [D, V]
    d_weight = d_weight + jax.lax.dot_general(
        *pair, ((lead, lead), ((), ())), preferred_element_type=f32
    )
    if d_bias is not None:
      d_bias = d_bias + jnp.sum(d, axis=lead)
    return (d_weight, d_bias), d_h.astype(hidden.dtype)

  xs = (
      _to_blocks(hidden, axis, st, 0),
      _to_blocks(labels, axis, st, IGNORE_INDEX),
      *(_to_blocks(x.astype(f32), axis, st, 0) for x in (lse, g_loss, g_nll)),
  )
  init = (jnp.zeros(weight.shape, f32), None if bias is None else jnp.zeros(bias.shape, f32))
  (d_weight, d_bias), d_hidden = jax.lax.scan(body, init, xs)
  d_hidden = _from_blocks(d_hidden, axis, hidden.shape[axis])
  d_bias = None if bias is None else d_bias.astype(bias.dtype)
  return d_hidden, d_weight.astype(weight.dtype), d_bias, None


_fused.defvjp(_fused_fwd, _fused_bwd)
