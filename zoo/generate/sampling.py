"""Choosing the next token from ``[B, V]`` logits: greedy, temperature, top-k, top-p.

The filters follow Hugging Face's order (temperature, then top-k, then top-p) and tie rules
(a token whose logit equals the k-th largest is kept). The numbers (temperature, k, p) are
traced arrays, so changing them does not recompile; only switching a filter on or off does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array

# Removed tokens get the most negative float32 rather than -inf: the sampler adds Gumbel noise
# (bounded below by about -5), so they can never win, and no inf - inf = NaN can appear.
FILTERED = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampling:
  """How the next token is chosen (``do_sample=False``: argmax, the other fields unused)."""

  do_sample: bool = False  # False = greedy
  temperature: float = 1.0  # logits / temperature before the filters
  top_k: int = 0  # keep the k most likely tokens; 0 = off
  top_p: float = 1.0  # keep the smallest set with probability >= top_p; 1.0 = off

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(
          f"temperature must be > 0; got {self.temperature}. For deterministic output use "
          "do_sample=False (greedy) instead of temperature 0."
      )
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"top_k must be an int >= 0 (0 = off); got {self.top_k!r}.")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] (1 = off); got {self.top_p}.")

  def static(self) -> tuple[bool, bool, bool]:
    """``(do_sample, uses_top_k, uses_top_p)``: the part that changes the compiled program."""
    return self.do_sample, self.do_sample and self.top_k > 0, self.do_sample and self.top_p < 1.0

  def values(self) -> tuple[Array, Array, Array]:
    """``(temperature, top_k, top_p)`` as arrays: traced, so new values reuse the program."""
    return (
        jnp.asarray(self.temperature, jnp.float32),
        jnp.asarray(self.top_k, jnp.int32),
        jnp.asarray(self.top_p, jnp.float32),
    )


def repetition_penalty(logits_BxV: Array, seen_BxV: Array, penalty: Array | float) -> Array:
  """Hugging Face's repetition penalty (Keskar et al. 2019): for tokens already in the prompt
  or the output (``seen_BxV`` True), positive logits are divided by ``penalty`` and negative
  ones multiplied by it, so ``penalty > 1`` makes repeats less likely. Applied before
  temperature and the filters, and in greedy decoding too."""
  logits = logits_BxV.astype(jnp.float32)
  penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
  return jnp.where(seen_BxV, penalised, logits)


def _sorted_descending(logits: Array) -> Array:
  return -jnp.sort(-logits, axis=-1)


def _kth_largest(sorted_BxV: Array, k: Array) -> Array:
  k = jnp.clip(k, 1, sorted_BxV.shape[-1])
  return jnp.take(sorted_BxV, k - 1, axis=-1)[..., None]


def _nucleus_threshold(sorted_BxV: Array, top_p: Array) -> Array:
  """The smallest kept logit: a token is kept while the mass strictly before it is < top_p."""
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  num_kept_B = jnp.maximum(jnp.sum(mass_before_BxV < top_p, axis=-1), 1)
  return jnp.take_along_axis(sorted_BxV, num_kept_B[:, None] - 1, axis=-1)


def top_k_filter(logits_BxV: Array, top_k: Array | int) -> Array:
  """Keep logits >= the ``top_k``-th largest of each row (ties kept); others -> FILTERED."""
  kth_Bx1 = _kth_largest(_sorted_descending(logits_BxV), jnp.asarray(top_k, jnp.int32))
  return jnp.where(logits_BxV < kth_Bx1, FILTERED, logits_BxV)


def top_p_filter(logits_BxV: Array, top_p: Array | float) -> Array:
  """Nucleus filter: keep the most likely tokens until their probability reaches ``top_p``.

  A token is kept when the probability of the tokens strictly more likely than it is below
  ``top_p`` (so the most likely token is always kept) — Hugging Face's rule, written in
  descending order.
  """
  threshold_Bx1 = _nucleus_threshold(_sorted_descending(logits_BxV), top_p)
  return jnp.where(logits_BxV < threshold_Bx1, FILTERED, logits_BxV)


def filter_logits(
    logits_BxV: Array,
    temperature: Array | float = 1.0,
    top_k: Array | int = 0,
    top_p: Array | float = 1.0,
    *,
    use_top_k: bool = True,
    use_top_p: bool = True,
) -> Array:
  """Temperature, then top-k (if ``top_k > 0``), then top-p (if ``top_p < 1``).

  Both filters read one descending sort: the temperature is monotone and top-k only turns a
  tail of the sorted row into FILTERED, which stays sorted.

  Args:
    logits_BxV: ``[B, V]`` next-token logits.
    temperature: divides the logits.
    top_k: keep the k most likely tokens; 0 keeps all.
    top_p: nucleus mass; 1 keeps all.
    use_top_k: static switch; False skips that filter's work entirely.
    use_top_p: static switch; False skips that filter's work entirely.

  Returns:
    ``[B, V]`` float32 logits with removed tokens at :data:`FILTERED`.
  """
  logits = logits_BxV.astype(jnp.float32) / temperature
  if not (use_top_k or use_top_p):
    return logits
  sorted_BxV = _sorted_descending(logits)
  if use_top_k:
    top_k = jnp.asarray(top_k, jnp.int32)
    kth_Bx1 = jnp.where(top_k > 0, _kth_largest(sorted_BxV, top_k), FILTERED)
    logits = jnp.where(logits < kth_Bx1, FILTERED, logits)
    sorted_BxV = jnp.where(sorted_BxV < kth_Bx1, FILTERED, sorted_BxV)
  if use_top_p:
    top_p = jnp.asarray(top_p, jnp.float32)
    threshold_Bx1 = jnp.where(top_p < 1.0, _nucleus_threshold(sorted_BxV, top_p), FILTERED)
    logits = jnp.where(logits < threshold_Bx1, FILTERED, logits)
  return logits


def next_token(
    rng: Array,
    logits_BxV: Array,
    temperature: Array | float = 1.0,
    top_k: Array | int = 0,
    top_p: Array | float = 1.0,
    *,
    static: tuple[bool, bool, bool] = (False, False, False),
) -> Array:
  """``[B]`` int32 next tokens: argmax, or a sample from the filtered distribution.

  Args:
    rng: PRNG key for this step.
    logits_BxV: ``[B, V]`` logits.
    temperature: see :func:`filter_logits`.
    top_k: see :func:`filter_logits`.
    top_p: see :func:`filter_logits`.
    static: ``Sampling.static()``: (do_sample, use_top_k, use_top_p).
  """
  do_sample, use_top_k, use_top_p = static
  if not do_sample:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = filter_logits(
      logits_BxV, temperature, top_k, top_p, use_top_k=use_top_k, use_top_p=use_top_p
  )
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
