"""Losses and statistics shared by the tasks: padding-aware sums, never means of means.

A task turns model outputs into *statistics*: ``name -> (sum, count)`` pairs. Sums and counts,
not means, so that micro-batches, devices and evaluation batches combine exactly: the mean over
a padded batch is ``sum(loss * weight) / sum(weight)``. Labels equal to :data:`IGNORE_INDEX`
(and rows padded onto a short final evaluation batch) have weight 0.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from zoo.data.batch import IGNORE_INDEX
from zoo.layers.fused_cross_entropy import Projection, fused_cross_entropy

Array = jax.Array


def cross_entropy(
    logits: Array, labels: Array, label_smoothing: float = 0.0
) -> tuple[Array, Array, Array]:
  """Per-example cross entropy in float32.

  Args:
    logits: ``[..., V]`` logits (any float dtype; upcast to float32).
    labels: ``[...]`` int labels; :data:`IGNORE_INDEX` entries give 0 and must be masked by
      the caller's weights.
    label_smoothing: epsilon of Szegedy et al. 2016: the target is ``(1 - eps) * one_hot +
      eps / V``.

  Returns:
    ``(loss, nll, correct)``, each ``[...]``: the (smoothed) training loss, the plain
    negative log-likelihood of the label, and whether the argmax is the label.
  """
  logits = logits.astype(jnp.float32)
  safe = jnp.where(labels == IGNORE_INDEX, 0, labels).astype(jnp.int32)
  loss, nll = _smoothed_nll(logits, safe, float(label_smoothing))
  correct = (jnp.argmax(logits, axis=-1) == safe).astype(jnp.float32)
  return loss, nll, correct


def head_cross_entropy(
    outputs: Array | Projection, labels: Array, label_smoothing: float = 0.0
) -> tuple[Array, Array, Array]:
  """:func:`cross_entropy` of logits, or of an output head's :class:`Projection` computed
  blockwise (:func:`zoo.layers.fused_cross_entropy.fused_cross_entropy`: the same values, and
  the ``[..., V]`` logits never exist; rows labelled :data:`IGNORE_INDEX` give 0)."""
  if isinstance(outputs, Projection):
    return fused_cross_entropy(outputs, labels, label_smoothing=label_smoothing)
  return cross_entropy(outputs, labels, label_smoothing)


# The gradient written out, ``softmax - target``, is one element-wise pass over the [..., V]
# logits. Left to autodiff, log_softmax + take_along_axis backpropagates through a full
# [..., V] log-probability array plus a scatter, which XLA:CPU lowers to transposed copies of
# the logits: with GPT-2's 50k vocabulary that was a fifth of the train step
# (benchmarks/profile.py).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _smoothed_nll(logits: Array, labels: Array, eps: float) -> tuple[Array, Array]:
  return _smoothed_nll_fwd(logits, labels, eps)[0]


def _smoothed_nll_fwd(logits, labels, eps):
  lse = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  nll = lse - label_logit
  loss = nll
  if eps:  # -mean(log p) = lse - mean(logits)
    loss = (1.0 - eps) * nll + eps * (lse - jnp.mean(logits, axis=-1))
  return (loss, nll), (logits, labels, lse)


def _smoothed_nll_bwd(eps, res, cotangents):
  logits, labels, lse = res
  g_loss, g_nll = cotangents  # custom_vjp passes zeros, never None, for an unused output
  probs = jnp.exp(logits - lse[..., None])
  one_hot = jnp.arange(logits.shape[-1], dtype=labels.dtype) == labels[..., None]
  # d loss = softmax - (1 - eps) one_hot - eps / V;  d nll = softmax - one_hot.
  g_total, g_hot = g_loss + g_nll, (1.0 - eps) * g_loss + g_nll
  d = probs * g_total[..., None] - jnp.where(one_hot, g_hot[..., None], 0.0)
  if eps:
    d = d - (eps / logits.shape[-1]) * g_loss[..., None]
  return d, None


_smoothed_nll.defvjp(_smoothed_nll_fwd, _smoothed_nll_bwd)


def weighted(values: Array, weights: Array) -> tuple[Array, Array]:
  """``(sum(values * weights), sum(weights))`` in float32: the parts of a padding-aware mean."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(values.astype(jnp.float32) * weights), jnp.sum(weights)


def label_weights(labels: Array, weights: Array | None = None) -> Array:
  """Float32 weights: 0 where ``labels == IGNORE_INDEX``, times ``weights`` if given."""
  w = (labels != IGNORE_INDEX).astype(jnp.float32)
  return w if weights is None else w * weights.astype(jnp.float32)


def means(stats: dict[str, tuple[Any, Any]]) -> dict[str, float]:
  """``name -> sum / count`` (0 where nothing counted), plus perplexities of the nll terms."""
  out = {}
  for name, (total, count) in stats.items():
    out[name] = float(total) / float(count) if float(count) > 0 else 0.0
  for name in list(out):
    if name == "nll" or name.endswith("_nll"):
      # Capped so a diverging run reports inf-free numbers in TensorBoard.
      out[name.replace("nll", "perplexity")] = math.exp(min(out[name], 50.0))
  return out
