"""Scaled dot-product attention, multi-head attention and its KV cache.

Letters used in shapes and einsum strings:
  B batch, T query (target) length, S key/value (source) length, D model width,
  N query heads, K key/value heads (N is a multiple of K), G = N // K query heads per
  key/value head, H head dim.

Masks (built with :mod:`zoo.layers.masks`) are boolean, True = attend, broadcastable to
``[B, N, T, S]``; an additive bias (relative positions) is a float array broadcastable to the
same shape, added to the scaled logits before the mask.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import sharding as sh
from zoo.layers import blockwise
from zoo.layers.attention_checks import check_decode_bias, check_inputs
from zoo.layers.dense import Einsum
from zoo.layers.dropout import dropout
from zoo.layers.masks import MASK_VALUE, combine_masks, sliding_window_mask
from zoo.layers.norms import RMSNorm
from zoo.layers.positional import RopeScaling, apply_rope

Array = jax.Array
Implementation = Literal["xla", "cudnn", "chunked"]
IMPLEMENTATIONS = typing.get_args(Implementation)

# Query and key block length of implementation="chunked" (min'd with T and S); the ``chunk_size``
# argument overrides it per call.
CHUNK_SIZE = 512
# On CPU, implementation=None takes the chunked path when the query and key lengths both reach
# this: the measured crossover of ``python -m benchmarks.attention`` (BENCHMARKS.md). Below it
# one key block leaves nothing to skip, and the einsum path is faster.
CHUNKED_MIN_LENGTH = 1024

# ----------------------------------------------------------------------------------------------
# The attention function.


def default_implementation(
    dtype: Any, length: int | None = None, kv_length: int | None = None
) -> Implementation:
  """What ``implementation=None`` runs for inputs of ``dtype`` and query / key lengths.

  cuDNN flash attention on GPU for 16-bit inputs; on CPU the blockwise "chunked" path once
  both lengths reach :data:`CHUNKED_MIN_LENGTH`; the einsum path everywhere else.
  """
  backend = jax.default_backend()
  if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  kv_length = length if kv_length is None else kv_length
  if backend == "cpu" and length is not None and min(length, kv_length) >= CHUNKED_MIN_LENGTH:
    return "chunked"
  return "xla"


def _resolve_implementation(
    implementation: str | None, query: Array, kv_length: int, needs_xla: str | None
) -> Implementation:
  if implementation is None:
    if needs_xla:
      return "xla"
    return default_implementation(query.dtype, query.shape[1], kv_length)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"implementation must be one of {IMPLEMENTATIONS} or None; got {implementation!r}."
    )
  if implementation == "chunked" and needs_xla:
    raise ValueError(
        f"implementation='chunked' does not support {needs_xla}: it never forms the "
        "[B, N, T, S] attention weights. Use implementation='xla' for that call."
    )
  if implementation == "cudnn":
    if jax.default_backend() != "gpu":
      raise ValueError(
          f"implementation='cudnn' needs an NVIDIA GPU; the default backend is "
          f"{jax.default_backend()!r}. Use implementation='xla' or None (best available)."
      )
    if jnp.dtype(query.dtype) not in (jnp.bfloat16, jnp.float16):
      raise ValueError(
          f"implementation='cudnn' needs bfloat16 or float16 inputs; got {query.dtype}. Cast "
          "q/k/v (e.g. model dtype=jnp.bfloat16) or use implementation='xla'."
      )
    if needs_xla:
      raise ValueError(f"implementation='cudnn' does not support {needs_xla}; use 'xla'.")
  return implementation


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None = None,
    bias: Array | None = None,
    implementation: Implementation | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_weights: bool = False,
    chunk_size: int | None = None,
    logit_softcap: float | None = None,
) -> Array | tuple[Array, Array]:
  """softmax(q k^T / sqrt(H) + bias, masked) v, for multi-head, grouped-query and multi-query.

  Args:
    query: ``[B, T, N, H]``.
    key: ``[B, S, K, H]`` with N a multiple of K; query head n reads key/value head n // (N/K).
    value: ``[B, S, K, H]``.
    mask: boolean, True = attend, broadcastable to ``[B, N, T, S]``.
    bias: additive logits bias broadcastable to ``[B, N, T, S]`` (relative positions: T5,
      ALiBi, BEiT), added after ``scale`` and before the mask: in float32 on the "xla" and
      "chunked" paths (which also give its gradient), in the input dtype on "cudnn".
    implementation: "xla" (einsum path, any device), "cudnn" (``jax.nn.dot_product_attention``
      flash attention, GPU with bf16/fp16 only), "chunked" (blockwise online softmax in pure
      JAX, any device and dtype, memory O(T * chunk) instead of O(T * S); no dropout, no
      weights; causal and other empty key blocks skipped, see :mod:`zoo.layers.blockwise`) or
      None: cuDNN on GPU for bf16/fp16, "chunked" on CPU when T and S are both at least
      :data:`CHUNKED_MIN_LENGTH`, else "xla" (and "xla" whenever weights or dropout are asked).
    scale: logits scale; default ``1/sqrt(H)`` so that q.k of unit-variance vectors (variance H)
      reaches the softmax with unit variance.
    dropout_rate: dropout on the attention weights (xla path; active when not deterministic).
    dropout_rng: PRNG key for that dropout.
    deterministic: disables dropout.
    return_weights: also return the ``[B, N, T, S]`` float32 attention weights (xla path).
    chunk_size: query/key block length of the "chunked" path; None = :data:`CHUNK_SIZE`.
    logit_softcap: ``cap * tanh(logits / cap)`` on the scaled logits before bias and mask
      (Gemma 2); "xla" path only (None picks it).

  Returns:
    ``[B, T, N, H]`` in the query dtype, and the weights when ``return_weights``.
  """
  use_dropout = dropout_rate > 0.0 and not deterministic
  impl = _check_call(
      query, key, value, mask, bias, implementation,
      use_dropout=use_dropout, dropout_rng=dropout_rng, return_weights=return_weights,
      softcap=logit_softcap is not None,
  )
  scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
  if impl == "cudnn":
    return _cudnn_attention(query, key, value, mask=mask, bias=bias, scale=scale)
  if impl == "chunked":
    return _chunked_attention(
        query, key, value, mask=mask, bias=bias, scale=scale, chunk_size=chunk_size
    )
  out, weights_BNTS = _xla_attention(
      query, key, value, mask=mask, bias=bias, scale=scale,
      dropout_rate=dropout_rate if use_dropout else 0.0, dropout_rng=dropout_rng,
      softcap=logit_softcap,
  )
  if return_weights:
    return out, weights_BNTS
  return out


def _check_call(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None,
    bias: Array | None,
    implementation: str | None,
    *,
    use_dropout: bool,
    dropout_rng: Array | None,
    return_weights: bool,
    softcap: bool = False,
) -> Implementation:
  """Checks :func:`dot_product_attention`'s arguments before anything is computed.

  Returns:
    The implementation to run.
  """
  check_inputs(query, key, value, mask, bias)
  needs_xla = (
      "return_weights" if return_weights else "attention dropout" if use_dropout
      else "attention logit soft-capping" if softcap else None
  )
  impl = _resolve_implementation(implementation, query, key.shape[1], needs_xla)
  if use_dropout and dropout_rng is None:
    raise ValueError("dropout_rate > 0 with deterministic=False needs a dropout_rng.")
  return impl


def _cudnn_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None,
    bias: Array | None,
    scale: float,
) -> Array:
  """The "cudnn" path: ``jax.nn.dot_product_attention(implementation="cudnn")``."""
  t, s = query.shape[1], key.shape[1]
  # cuDNN wants mask/bias with full [T, S] trailing dims (only B and N may be 1) and a bias
  # in the input dtype; a [B, 1, 1, S] key-padding mask is valid everywhere else.
  if mask is not None:
    mask = jnp.broadcast_to(mask, (*mask.shape[:2], t, s))
  if bias is not None:
    bias = jnp.broadcast_to(bias, (*bias.shape[:2], t, s)).astype(query.dtype)
  return jax.nn.dot_product_attention(
      query, key, value, bias=bias, mask=mask, scale=scale, implementation="cudnn"
  )


def _xla_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None,
    bias: Array | None,
    scale: float,
    dropout_rate: float,
    dropout_rng: Array | None,
    softcap: float | None = None,
) -> tuple[Array, Array]:
  """The "xla" path: ``(out [B, T, N, H], weights [B, N, T, S])``, the weights in float32
  and before dropout (none when ``dropout_rate`` is 0)."""
  b, t, n, h = query.shape
  s, k = key.shape[1], key.shape[2]
  g = n // k
  q_BTKGH = query.reshape(b, t, k, g, h)
  # Logits and softmax in float32 whatever the compute dtype: bf16 logits lose the small
  # differences that decide the softmax.
  logits = jnp.einsum(
      "BTKGH,BSKH->BKGTS", q_BTKGH, key, preferred_element_type=jnp.float32
  ).reshape(b, n, t, s)
  logits = logits * scale
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, MASK_VALUE)
  weights_BNTS = jax.nn.softmax(logits, axis=-1)
  probs = weights_BNTS
  if dropout_rate > 0.0:
    probs = dropout(probs, dropout_rate, dropout_rng)
  probs = probs.astype(value.dtype).reshape(b, k, g, t, s)
  out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, value).reshape(b, t, n, h)
  return out, weights_BNTS


def _chunked_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None,
    bias: Array | None,
    scale: float,
    chunk_size: int | None,
) -> Array:
  """The "chunked" path: :func:`zoo.layers.blockwise.blockwise_attention` with this module's
  block length (:data:`CHUNK_SIZE` unless ``chunk_size`` is given) and mask value."""
  chunk = CHUNK_SIZE if chunk_size is None else chunk_size
  return blockwise.blockwise_attention(
      query, key, value, mask=mask, bias=bias, scale=scale, chunk_size=chunk,
      mask_value=MASK_VALUE,
  )


# ----------------------------------------------------------------------------------------------
# Multi-head attention module.


def _window(mask: Array | None, window: int | None, q_slots: Array, kv_slots: Array):
  """``mask`` and, when ``window`` is set, :func:`sliding_window_mask` of these slots."""
  if window is None:
    return mask
  return combine_masks(mask, sliding_window_mask(q_slots, kv_slots, window))


class MultiHeadAttention(nn.Module):
  """Multi-head (or grouped-query / multi-query) attention with an optional KV cache.

  Parameters: ``query`` ``[D, N, H]``, ``key`` / ``value`` ``[D, K, H]``, ``out`` ``[N, H, D]``
  kernels (plus biases when ``use_bias``), each with logical axis names.

  Decoding: initialise with ``decode=True`` on an input of the full cache length
  ``[B, max_len, D]`` to allocate the ``"cache"`` collection, then call with ``decode=True`` on
  chunks (a prompt, then one token at a time) with ``mutable=["cache"]``. Each call writes its
  keys/values at the cache index and attends causally to everything written so far; an extra
  ``mask`` is then broadcastable to ``[B, N, T, max_len]`` (e.g. prompt padding), and so is
  ``bias``: the rows of this call's T tokens (cache slots ``cache_index .. cache_index + T - 1``)
  against every cache slot ``0 .. max_len - 1`` (unwritten slots are masked, so any finite
  value does there).
  """

  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None  # None = num_heads (plain MHA); 1 = multi-query
  out_features: int | None = None  # None = the query input width
  use_bias: bool = True
  dropout_rate: float = 0.0  # on the attention weights
  use_rope: bool = False  # rotary positions on q and k (self-attention only)
  rope_base: float = 10000.0
  rope_scaling: RopeScaling | None = None  # long-context frequency scaling (Llama 3)
  qkv_bias: bool | None = None  # biases on query/key/value only (Qwen2); None = use_bias
  sliding_window: int | None = None  # self-attention reads the last W slots only (Mistral)
  implementation: Implementation | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  out_kernel_init: Any = None  # None = kernel_init (GPT-2 scales residual projections)
  query_kernel_init: Any = None  # None = kernel_init (T5 folds 1/sqrt(H) into the query)
  scale: float | None = None  # logits scale; None = 1/sqrt(head_dim) (T5: 1.0)
  qk_norm: bool = False  # RMSNorm over H of each query and key head, before RoPE (Qwen3, Gemma 3)
  norm_eps: float = 1e-6  # epsilon of the q/k RMSNorm
  norm_scale_offset: float = 0.0  # q/k RMSNorm multiplies by offset + scale (Gemma 3: 1)
  logit_softcap: float | None = None  # cap * tanh(logits / cap) (Gemma 2); None = off

  @nn.compact
  def __call__(
      self,
      inputs_q: Array,
      inputs_kv: Array | None = None,
      *,
      mask: Array | None = None,
      bias: Array | None = None,
      positions: Array | None = None,
      deterministic: bool = True,
      decode: bool = False,
      sow_weights: bool = False,
      window: Array | None = None,
      rope_inv_freq: Array | None = None,
  ) -> Array:
    """Attention of ``inputs_q [B, T, D]`` over ``inputs_kv [B, S, D]`` (itself if None).

    Args:
      inputs_q: ``[B, T, D]`` queries.
      inputs_kv: ``[B, S, Dkv]`` keys/values source for cross-attention; None = self-attention.
      mask: boolean, broadcastable to ``[B, N, T, S]`` (``[B, N, T, max_len]`` when decoding).
      bias: additive logits bias, broadcastable to ``[B, N, T, S]`` (``[B, N, T, max_len]``
        when decoding, see the class docstring); added after ``scale``, before the mask (in
        float32, except on cuDNN: see :func:`dot_product_attention`).
      positions: ``[B, T]`` (or ``[T]``) positions for RoPE; default ``arange(T)`` (offset by
        the cache index when decoding).
      deterministic: disables dropout.
      decode: use and update the KV cache (self-attention only).
      sow_weights: store the ``[B, N, T, S]`` weights in the ``"intermediates"`` collection
        as ``attention_weights`` (forces the xla path).
      window: a scalar int array used as this call's sliding window instead of
        ``sliding_window`` (a layer's own window in a stack of local and global layers, traced
        per layer under ``nn.scan``; a value above any length attends to everything).
      rope_inv_freq: ``[H/2]`` RoPE inverse frequencies instead of ``rope_base`` /
        ``rope_scaling`` (see :func:`zoo.layers.positional.apply_rope`).

    Returns:
      ``[B, T, out_features]``.
    """
    num_kv = self._check_inputs(inputs_q, inputs_kv, decode)
    self_attention = inputs_kv is None
    kv_in = inputs_q if self_attention else inputs_kv
    query, key, value = self._project_qkv(inputs_q, kv_in, num_kv)

    b, t = inputs_q.shape[:2]
    cache = self._cache(key, value) if decode else None
    cache_index = None if cache is None else cache[2].value
    if positions is None:
      positions = jnp.arange(t)[None, :] + (0 if cache_index is None else cache_index)
    positions = jnp.broadcast_to(jnp.asarray(positions), (b, t))

    if self.use_rope and self_attention:
      rope = dict(base=self.rope_base, scaling=self.rope_scaling, inv_freq=rope_inv_freq)
      query, key = apply_rope(query, positions, **rope), apply_rope(key, positions, **rope)
    slots = (jnp.arange(t), jnp.arange(t))  # query and key slots, for the sliding window
    if cache is not None:
      key, value, mask, slots = self._write_cache(cache, key, value, mask)
      check_decode_bias(bias, t, key.shape[1])
    # The window is over slots (sequence or cache indices), like the causal mask.
    window = self.sliding_window if window is None else window
    mask = _window(mask, window if self_attention else None, *slots)

    result = self._attend(query, key, value, mask, bias, deterministic, sow_weights)
    return self._project_out(result, self.out_features or inputs_q.shape[-1])

  def _check_inputs(self, inputs_q: Array, inputs_kv: Array | None, decode: bool) -> int:
    """Checks ranks and the decode / head settings; returns the number of key/value heads K."""
    if inputs_q.ndim != 3:
      raise ValueError(f"inputs_q must be [batch, length, features]; got {tuple(inputs_q.shape)}.")
    self_attention = inputs_kv is None
    if not self_attention and inputs_kv.ndim != 3:
      raise ValueError(
          f"inputs_kv must be [batch, length, features]; got {tuple(inputs_kv.shape)}."
      )
    if decode and not self_attention:
      raise ValueError(
          "decode=True caches self-attention only; call cross-attention without it."
      )
    num_kv = self.num_kv_heads or self.num_heads
    if self.num_heads % num_kv:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={num_kv}."
      )
    return num_kv

  def _project_qkv(self, inputs_q: Array, kv_in: Array, num_kv: int):
    """``[B, T, D]``, ``[B, S, Dkv]`` -> query ``[B, T, N, H]``, key and value ``[B, S, K, H]``."""
    qkv_bias = self.use_bias if self.qkv_bias is None else self.qkv_bias
    proj = lambda x, heads, heads_axis, name, init=self.kernel_init: Einsum(  # noqa: E731
        (x.shape[-1], heads, self.head_dim),
        (sh.EMBED, heads_axis, sh.HEAD_DIM),
        use_bias=qkv_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=init,
        name=name,
    )
    query_init = self.query_kernel_init or self.kernel_init
    query = proj(inputs_q, self.num_heads, sh.HEADS, "query", query_init)(
        "BLD,DNH->BLNH", inputs_q
    )
    key = proj(kv_in, num_kv, sh.KV_HEADS, "key")("BLD,DNH->BLNH", kv_in)
    value = proj(kv_in, num_kv, sh.KV_HEADS, "value")("BLD,DNH->BLNH", kv_in)
    if self.qk_norm:
      norm = lambda name: RMSNorm(  # noqa: E731
          epsilon=self.norm_eps, param_dtype=self.param_dtype,
          scale_offset=self.norm_scale_offset, name=name,
      )
      query = norm("query_norm")(query).astype(self.dtype)
      key = norm("key_norm")(key).astype(self.dtype)
    return query, key, value

  def _cache(self, key: Array, value: Array):
    """``(cached_key, cached_value, cache_index)`` variables, or None on the call that
    allocates them (shaped like this call's ``key`` / ``value``, ``[B, max_len, K, H]``)."""
    initialised = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    return (cached_key, cached_value, index) if initialised else None

  def _write_cache(self, cache, key: Array, value: Array, mask: Array | None):
    """Writes this call's ``[B, T, K, H]`` keys/values at the cache index and advances it.

    Returns the whole cache's key and value ``[B, max_len, K, H]``, ``mask`` combined with
    causality over the cache, and the (query, key) slots for the sliding window.
    """
    cached_key, cached_value, index = cache
    cache_index = index.value
    t, max_len = key.shape[1], cached_key.value.shape[1]
    if t > max_len:
      raise ValueError(f"decoding {t} tokens at once exceeds the cache length {max_len}.")
    key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, cache_index, 0, 0))
    value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, cache_index, 0, 0))
    cached_key.value, cached_value.value = key, value
    index.value = cache_index + t
    # Slots are written in order, so "slot <= this query's slot" is causal over the cache
    # and hides the unwritten tail.
    q_slot = cache_index + jnp.arange(t)
    cache_mask = (jnp.arange(max_len)[None, :] <= q_slot[:, None])[None, None]
    return key, value, combine_masks(mask, cache_mask), (q_slot, jnp.arange(max_len))

  def _attend(self, query, key, value, mask, bias, deterministic: bool, sow_weights: bool):
    """:func:`dot_product_attention` with this module's settings; ``[B, T, N, H]``."""
    dropout_rng = None
    if self.dropout_rate > 0.0 and not deterministic:
      dropout_rng = self.make_rng("dropout")
    result = dot_product_attention(
        query,
        key,
        value,
        mask=mask,
        bias=bias,
        implementation="xla" if sow_weights else self.implementation,
        scale=self.scale,
        dropout_rate=self.dropout_rate,
        dropout_rng=dropout_rng,
        deterministic=deterministic,
        return_weights=sow_weights,
        logit_softcap=self.logit_softcap,
    )
    if sow_weights:
      result, weights = result
      self.sow("intermediates", "attention_weights", weights)
    return result

  def _project_out(self, result: Array, features: int) -> Array:
    """``[B, T, N, H]`` -> ``[B, T, features]`` through the ``out`` kernel."""
    out = Einsum(
        (self.num_heads, self.head_dim, features),
        (sh.HEADS, sh.HEAD_DIM, sh.EMBED),
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=self.out_kernel_init or self.kernel_init,
        name="out",
    )
    return out("BTNH,NHD->BTD", result)
