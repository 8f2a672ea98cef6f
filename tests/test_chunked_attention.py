"""Tests for implementation="chunked" of zoo.layers.attention.dot_product_attention.

Reference: the "xla" path of the same function; forward values and gradients (q, k, v, bias)
agree to 1e-5 in float32 for MHA and GQA with padding, causal, segment and fully masked rows,
lengths that are not block multiples, through the KV cache of MultiHeadAttention and a GPT.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.layers import attention as attn_lib
from zoo.layers.attention import IMPLEMENTATIONS, MultiHeadAttention, dot_product_attention
from zoo.layers.masks import (
    causal_mask,
    combine_masks,
    padding_mask,
    segment_mask,
    valid_from_lengths,
)
from zoo.models.gpt import GPT, GPTConfig

B, T, S, H = 2, 7, 11, 8
CHUNK = 3  # neither T nor S is a multiple: both get padded


def _qkv(n, k, *, t=T, s=S, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, t, n, H)).astype(np.float32)
  key = rng.standard_normal((B, s, k, H)).astype(np.float32)
  v = rng.standard_normal((B, s, k, H)).astype(np.float32)
  return jnp.asarray(q), jnp.asarray(key), jnp.asarray(v)


def _assert_same(q, k, v, mask=None, bias=None, chunk=CHUNK):
  """Forward and gradients of chunked == xla."""

  def loss(impl, q, k, v, bias):
    out = dot_product_attention(
        q, k, v, mask=mask, bias=bias, implementation=impl, chunk_size=chunk
    )
    # A fixed random cotangent, so every output element reaches the gradients.
    w = jax.random.normal(jax.random.key(1), out.shape)
    return jnp.sum(out * w), out

  argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)
  results = {}
  for impl in ("xla", "chunked"):
    fn = jax.jit(jax.value_and_grad(functools.partial(loss, impl), argnums, has_aux=True))
    (_, out), grads = fn(q, k, v, bias)
    results[impl] = (out, grads)
  (out_x, g_x), (out_c, g_c) = results["xla"], results["chunked"]
  assert out_c.shape == out_x.shape and out_c.dtype == out_x.dtype
  assert np.isfinite(np.asarray(out_c)).all()
  np.testing.assert_allclose(out_c, out_x, atol=1e-5, rtol=1e-5)
  for name, gc, gx in zip(("q", "k", "v", "bias"), g_c, g_x):
    assert np.isfinite(np.asarray(gc)).all(), name
    np.testing.assert_allclose(gc, gx, atol=1e-5, rtol=1e-5, err_msg=f"grad {name}")


def test_chunked_is_an_implementation():
  assert "chunked" in IMPLEMENTATIONS
  assert attn_lib.CHUNK_SIZE == 512


@pytest.mark.parametrize(
    "n,k,chunk", [(4, 4, CHUNK), (4, 2, 4), (4, 1, 512)], ids=["mha", "gqa", "mqa-one-block"]
)
def test_no_mask_matches_xla(n, k, chunk):
  _assert_same(*_qkv(n, k), chunk=chunk)


# Padding with grouped heads, causal with full ones: every mask kind and both head layouts are
# covered without compiling each pair.
@pytest.mark.parametrize("n,k", [(4, 2)], ids=["gqa"])
def test_padding_mask_matches_xla(n, k):
  q_valid = valid_from_lengths(jnp.array([T, 4]), T)
  kv_valid = valid_from_lengths(jnp.array([S, 6]), S)
  _assert_same(*_qkv(n, k), mask=padding_mask(q_valid, kv_valid))
  # The [B, 1, 1, S] key-padding form (broadcast T axis).
  _assert_same(*_qkv(n, k), mask=kv_valid[:, None, None, :])


@pytest.mark.parametrize("n,k", [(4, 4)], ids=["mha"])
def test_causal_mask_matches_xla(n, k):
  _assert_same(*_qkv(n, k, t=T, s=T), mask=causal_mask(T))
  _assert_same(*_qkv(n, k), mask=causal_mask(T, S))  # queries are the last T of S


def test_segment_mask_packed_rows_matches_xla():
  seg = jnp.array([[1, 1, 1, 2, 2, 3, 3, 3, 0, 0], [1, 1, 1, 1, 1, 1, 2, 2, 2, 2]])
  mask = combine_masks(causal_mask(10), segment_mask(seg), padding_mask(seg != 0))
  _assert_same(*_qkv(4, 2, t=10, s=10), mask=mask)


def test_fully_masked_rows_equal_xla_uniform_average():
  q, k, v = _qkv(4, 2)
  mask = np.ones((B, 4, T, S), bool)
  mask[0, :, 2] = False  # one query row sees nothing, in every head
  mask[1, 3, :] = False  # one head of one example sees nothing
  mask[1, 0, 0, : 2 * CHUNK] = False  # the first two key blocks masked for a row: rescaling
  _assert_same(q, k, v, mask=jnp.asarray(mask))
  out = dot_product_attention(q, k, v, mask=jnp.asarray(mask), implementation="chunked",
                              chunk_size=CHUNK)
  # Uniform over the S real keys (padded keys take no weight): the mean of v.
  np.testing.assert_allclose(out[0, 2, 0], v[0, :, 0].mean(0), atol=1e-5)


@pytest.mark.parametrize("bias_shape", [(B, 4, T, S), (1, 4, T, S), (B, 1, 1, S)])
def test_additive_bias_matches_xla_with_gradient(bias_shape):
  bias = jax.random.normal(jax.random.key(2), bias_shape)
  _assert_same(*_qkv(4, 2), bias=bias, mask=causal_mask(T, S))


def test_lengths_not_block_multiples_and_singletons():
  for t, s, chunk in ((1, 9, 4), (9, 1, 4), (13, 5, 2)):
    _assert_same(*_qkv(2, 1, t=t, s=s), mask=causal_mask(t, max(s, t))[..., :s], chunk=chunk)


def test_bfloat16_inputs_close_to_xla():
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(4, 2))
  a = dot_product_attention(q, k, v, mask=causal_mask(T, S), implementation="xla")
  c = dot_product_attention(q, k, v, mask=causal_mask(T, S), implementation="chunked",
                            chunk_size=CHUNK)
  assert c.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(c, np.float32), np.asarray(a, np.float32), atol=3e-2)


def test_clear_errors():
  q, k, v = _qkv(4, 2)
  with pytest.raises(ValueError, match="chunked.*return_weights.*implementation='xla'"):
    dot_product_attention(q, k, v, implementation="chunked", return_weights=True)
  with pytest.raises(ValueError, match="chunked.*attention dropout.*implementation='xla'"):
    dot_product_attention(
        q, k, v, implementation="chunked", dropout_rate=0.1, dropout_rng=jax.random.key(0),
        deterministic=False,
    )
  # Deterministic dropout is a no-op: allowed.
  dot_product_attention(q, k, v, implementation="chunked", dropout_rate=0.1)
  with pytest.raises(ValueError, match="chunk_size must be a positive int"):
    dot_product_attention(q, k, v, implementation="chunked", chunk_size=0)
  with pytest.raises(ValueError, match="implementation must be one of"):
    dot_product_attention(q, k, v, implementation="flash")


# ----------------------------------------------------------------------------------------------
# Through MultiHeadAttention (KV cache) and a model config.

D = 16


def _mha(impl, num_kv_heads=2):
  return MultiHeadAttention(num_heads=4, head_dim=4, num_kv_heads=num_kv_heads, use_rope=True,
                            implementation=impl)


def test_mha_kv_cache_decoding_chunked_equals_xla(monkeypatch):
  monkeypatch.setattr(attn_lib, "CHUNK_SIZE", 3)  # the 8-slot cache is 3 key blocks
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6, D)), jnp.float32)
  max_len = 8
  params = _mha("xla").init(jax.random.key(0), x)["params"]
  outs = {}
  for impl in ("xla", "chunked"):
    mha = _mha(impl)
    cache = jax.tree.map(
        jnp.zeros_like,
        mha.init(jax.random.key(0), jnp.zeros((2, max_len, D)), decode=True)["cache"],
    )
    step = jax.jit(lambda c, chunk, mha=mha: mha.apply(
        {"params": params, "cache": c}, chunk, decode=True, mutable=["cache"]))
    seq = []
    for chunk in (x[:, :4], x[:, 4:5], x[:, 5:6]):  # a prefill, then single tokens
      out, mutated = step(cache, chunk)
      cache = mutated["cache"]
      seq.append(out)
    outs[impl] = jnp.concatenate(seq, axis=1)
  np.testing.assert_allclose(outs["chunked"], outs["xla"], atol=1e-5, rtol=1e-5)
  full = _mha("xla").apply({"params": params}, x, mask=causal_mask(6))
  np.testing.assert_allclose(outs["chunked"], full, atol=1e-5, rtol=1e-5)


def test_mha_attention_dropout_with_chunked_raises():
  mha = MultiHeadAttention(num_heads=2, head_dim=4, dropout_rate=0.1, implementation="chunked")
  x = jnp.ones((1, 3, D))
  params = mha.init(jax.random.key(0), x)["params"]
  mha.apply({"params": params}, x)  # deterministic: fine
  with pytest.raises(ValueError, match="implementation='xla'"):
    mha.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})


@pytest.mark.parametrize("num_kv_heads", [2], ids=["gqa"])
def test_gpt_chunked_logits_equal_xla(monkeypatch, num_kv_heads):
  monkeypatch.setattr(attn_lib, "CHUNK_SIZE", 4)
  calls = []
  chunked_fn = attn_lib._chunked_attention
  monkeypatch.setattr(
      attn_lib, "_chunked_attention", lambda *a, **kw: calls.append(1) or chunked_fn(*a, **kw)
  )
  tiny = dict(vocab_size=61, max_len=16, d_model=32, num_heads=4, num_layers=2, mlp_dim=64,
              num_kv_heads=num_kv_heads)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 61, (2, 11)), jnp.int32)
  valid = jnp.arange(11)[None, :] < jnp.array([[11], [7]])
  xla = GPT(GPTConfig(**tiny, attention_impl="xla"))
  chunked = GPT(GPTConfig(**tiny, attention_impl="chunked"))
  params = xla.init(jax.random.key(0), ids)["params"]
  for kwargs in ({}, {"attention_mask": valid}):
    want = xla.apply({"params": params}, ids, **kwargs)
    got = jax.jit(functools.partial(chunked.apply, **kwargs))({"params": params}, ids)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert len(calls) == 2 * 2  # the chunked path ran, in both layers, for both calls


# ----------------------------------------------------------------------------------------------
# Block skipping and memory.


def test_causal_key_blocks_after_the_query_block_are_never_read():
  # NaN values in key block 1 (keys 4..7): the einsum path multiplies them by weight 0 and
  # gets NaN for every row; the chunked path must not touch that block for query block 0
  # (rows 0..3), forward or backward.
  q, k, v = _qkv(4, 2, t=8, s=8)
  v = v.at[:, 4:].set(jnp.nan)
  mask = causal_mask(8)

  def loss(impl, q, k, v):
    out = dot_product_attention(q, k, v, mask=mask, implementation=impl, chunk_size=4)
    return jnp.sum(out[:, :4]), out

  (_, out), grads = jax.jit(jax.value_and_grad(
      functools.partial(loss, "chunked"), (0, 1, 2), has_aux=True))(q, k, v)
  assert np.isfinite(np.asarray(out[:, :4])).all() and np.isnan(np.asarray(out[:, 4:])).all()
  # dq of rows 0..3 would be 0 * NaN = NaN had key block 1 been read for query block 0 (dk
  # is not checked: query block 1 legitimately reads the NaN values).
  for g in (grads[0], grads[2]):
    assert np.isfinite(np.asarray(g[:, :4])).all()
  assert np.isnan(np.asarray(dot_product_attention(q, k, v, mask=mask)[:, :4])).all()


def test_backward_memory_is_blockwise():
  # Compiled temporary memory of the gradient: the einsum path holds [B, N, T, S] scores and
  # weights; the chunked one only [B, N, bq, bk] blocks, the output and the row statistics.
  t, n, h = 512, 1, 4
  x = jax.ShapeDtypeStruct((1, t, n, h), jnp.float32)
  mask = causal_mask(t)

  def temp_bytes(impl):
    def loss(q, k, v):
      out = dot_product_attention(q, k, v, mask=mask, implementation=impl, chunk_size=32)
      return jnp.sum(out)
    compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(x, x, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  scores = n * t * t * 4
  assert temp_bytes("xla") > scores
  assert temp_bytes("chunked") < scores / 4


def test_none_picks_chunked_on_cpu_from_the_threshold_on(monkeypatch):
  calls = []
  real = attn_lib._chunked_attention
  monkeypatch.setattr(attn_lib, "_chunked_attention",
                      lambda *a, **kw: calls.append(a[0].shape[1]) or real(*a, **kw))
  n = attn_lib.CHUNKED_MIN_LENGTH
  assert attn_lib.default_implementation(jnp.float32, n, n) == "chunked"
  assert attn_lib.default_implementation(jnp.float32, n - 1, n) == "xla"
  assert attn_lib.default_implementation(jnp.float32, 1, 4 * n) == "xla"  # a decoding step
  for t in (n - 1, n):  # traced only: nothing runs
    x = jax.ShapeDtypeStruct((1, t, 2, 4), jnp.float32)
    jax.eval_shape(lambda q, t=t: dot_product_attention(q, q, q, mask=causal_mask(t)), x)
    # Weights or dropout need the einsum path: None falls back to it whatever the length.
    jax.eval_shape(lambda q: dot_product_attention(q, q, q, return_weights=True), x)
  assert calls == [n]
