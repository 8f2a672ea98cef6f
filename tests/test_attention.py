"""Tests for zoo.layers.attention and zoo.layers.masks: attention, masks, MHA, KV cache.

References: ``jax.nn.dot_product_attention(implementation="xla")`` and a float64 numpy softmax
written here; properties: causality by perturbation and by gradient, cached == full decoding.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from zoo.layers import attention as attn_lib
from zoo.layers.attention import MultiHeadAttention, dot_product_attention
from zoo.layers.masks import (
    causal_mask,
    causal_mask_from_positions,
    combine_masks,
    padding_mask,
    segment_mask,
    valid_from_ids,
    valid_from_lengths,
)

B, T, S, H = 2, 5, 7, 8


def _qkv(n, k, *, t=T, s=S, h=H, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, t, n, h)).astype(dtype)
  key = rng.standard_normal((B, s, k, h)).astype(dtype)
  v = rng.standard_normal((B, s, k, h)).astype(dtype)
  return q, key, v


def _numpy_attention(q, k, v, mask=None, bias=None):
  """Independent reference: float64, heads repeated explicitly, masked entries dropped."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  n, kv = q.shape[2], k.shape[2]
  k = np.repeat(k, n // kv, axis=2)  # query head i reads kv head i // (n // kv)
  v = np.repeat(v, n // kv, axis=2)
  logits = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  logits = np.broadcast_to(logits, (q.shape[0], n, q.shape[1], k.shape[1])).copy()
  if mask is not None:
    logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
  logits -= logits.max(-1, keepdims=True)
  w = np.exp(logits)
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", w, v), w


def _random_mask(seed=1):
  """A [B, 1, T, S] mask with at least one key per query row."""
  rng = np.random.default_rng(seed)
  m = rng.random((B, 1, T, S)) > 0.4
  m[..., 0] = True
  return m


# ----------------------------------------------------------------------------------------------
# The attention function against two references.


# Jitted once per shape: one compilation is far cheaper than op-by-op dispatch of each variant.
_attention = jax.jit(
    dot_product_attention, static_argnames=("implementation", "scale", "return_weights")
)


@jax.jit
def _four_variants(q, key, v, mask, bias):
  """(ours, jax.nn "xla") for no mask/bias, mask, bias, mask and bias: one compilation."""
  results = []
  for m, b in ((None, None), (mask, None), (None, bias), (mask, bias)):
    ours = dot_product_attention(q, key, v, mask=m, bias=b, implementation="xla")
    ref = jax.nn.dot_product_attention(q, key, v, bias=b, mask=m, implementation="xla")
    results.append((ours, ref))
  return results


@pytest.mark.parametrize("n,k", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_xla_matches_jax_and_numpy(n, k):
  q, key, v = _qkv(n, k)
  mask = _random_mask()
  bias = np.random.default_rng(2).standard_normal((1, n, T, S)).astype(np.float32)
  variants = [(None, None), (mask, None), (None, bias), (mask, bias)]
  results = _four_variants(q, key, v, mask, bias)
  for (m, b), (out, ref_jax) in zip(variants, results):
    assert out.shape == (B, T, n, H) and out.dtype == jnp.float32
    ref_np, _ = _numpy_attention(q, key, v, m, b)
    np.testing.assert_allclose(out, ref_jax, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out, ref_np, atol=1e-5, rtol=1e-5)
  # The mask and the bias matter (so equality above is not vacuous).
  outs = [np.asarray(o) for o, _ in results]
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[0], outs[2])


def test_return_weights_match_numpy_and_sum_to_one():
  q, key, v = _qkv(4, 2)
  mask = _random_mask()
  out, w = _attention(q, key, v, mask=mask, return_weights=True)
  ref_out, ref_w = _numpy_attention(q, key, v, mask)
  assert w.shape == (B, 4, T, S) and w.dtype == jnp.float32
  np.testing.assert_allclose(w, ref_w, atol=1e-6)
  np.testing.assert_allclose(out, ref_out, atol=1e-5)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  assert np.all(np.asarray(w)[~np.broadcast_to(mask, w.shape)] == 0.0)


def test_key_padding_mask_with_singleton_query_axis_and_explicit_scale():
  q, key, v = _qkv(2, 2)
  kv_valid = valid_from_lengths(jnp.array([3, 7]), S)
  mask = kv_valid[:, None, None, :]  # [B, 1, 1, S]
  out = _attention(q, key, v, mask=mask, scale=1.0)
  # scale=1 on q is the default 1/sqrt(H) on q * sqrt(H).
  ref, _ = _numpy_attention(q * math.sqrt(H), key, v, np.asarray(mask))
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Why 1/sqrt(d).


def test_dot_product_variance_grows_with_d_and_scaling_restores_one():
  rng = np.random.default_rng(0)
  samples = 10_000
  for d in (16, 64, 256, 1024):
    q = rng.standard_normal((samples, d), dtype=np.float32)
    k = rng.standard_normal((samples, d), dtype=np.float32)
    dots = np.einsum("nd,nd->n", q, k, dtype=np.float64)
    var = dots.var()
    # Sum of d independent products with variance 1: variance d. Relative std error of the
    # estimate is about sqrt(2/samples) = 1.4%, so 10% is a loose but meaningful bound.
    assert abs(var / d - 1.0) < 0.1, (d, var)
    scaled_var = (dots / math.sqrt(d)).var()
    assert abs(scaled_var - 1.0) < 0.1, (d, scaled_var)
  # Unscaled, d=1024 logits (std 32) saturate the softmax into a near one-hot, whose
  # gradient vanishes; scaled (std 1) they do not. Averaged over 100 queries of 16 keys.
  logits = rng.standard_normal((100, 1024)) @ rng.standard_normal((1024, 16))

  def mean_max_weight(z):
    w = np.exp(z - z.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)).max(-1).mean()

  assert mean_max_weight(logits) > 0.9
  assert mean_max_weight(logits / math.sqrt(1024)) < 0.5


# ----------------------------------------------------------------------------------------------
# Masking properties.


def test_fully_masked_row_is_finite_with_finite_gradients():
  q, key, v = _qkv(4, 2)
  mask = _random_mask()
  mask[0, 0, 2, :] = False  # batch 0, query 2 sees nothing

  @jax.jit
  def out_and_grads(q, key, v):
    f = lambda q, key, v: dot_product_attention(q, key, v, mask=mask)
    out = f(q, key, v)
    grads = jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2))(q, key, v)
    return out, grads

  out, grads = out_and_grads(q, key, v)
  assert np.all(np.isfinite(out))
  for g in grads:
    assert np.all(np.isfinite(g))
  # The other rows are untouched by the dead row.
  ref, _ = _numpy_attention(q, key, v, mask | ~mask.any(-1, keepdims=True))
  keep = np.ones((B, T), bool)
  keep[0, 2] = False
  np.testing.assert_allclose(np.asarray(out)[keep], ref[keep], atol=1e-5)


def test_causal_outputs_ignore_future_keys_and_values():
  q, key, v = _qkv(4, 2, t=6, s=6)
  mask = causal_mask(6)
  out = np.asarray(_attention(q, key, v, mask=mask))
  rng = np.random.default_rng(5)
  for t in range(5):
    key2, v2 = key.copy(), v.copy()
    key2[:, t + 1 :] = rng.standard_normal(key2[:, t + 1 :].shape)
    v2[:, t + 1 :] = rng.standard_normal(v2[:, t + 1 :].shape)
    out2 = np.asarray(_attention(q, key2, v2, mask=mask))
    np.testing.assert_array_equal(out2[:, : t + 1], out[:, : t + 1])
    assert not np.allclose(out2[:, t + 1 :], out[:, t + 1 :])


def test_causal_gradients_after_t_are_exactly_zero():
  q, key, v = _qkv(2, 1, t=5, s=5)
  mask = causal_mask(5)
  jac_fn = jax.jit(jax.jacrev(lambda k, v: dot_product_attention(q, k, v, mask=mask), (0, 1)))
  future = np.triu(np.ones((5, 5), bool), k=1)  # [t, s]: s > t
  for name, jac in zip("kv", jac_fn(key, v)):  # [B, T, N, H, B, S, K, H]
    size = np.abs(np.asarray(jac)).sum(axis=(2, 3, 6, 7))  # [B, T, B, S]
    same_batch = np.einsum("btbs->bts", size)
    assert np.all(same_batch[:, future] == 0.0), name
    # ...and the past does get gradient (so the check above can fail). With a single visible
    # key the softmax is constant, so the key gradient of position 0 is legitimately zero.
    past = ~future
    if name == "k":
      past[0, 0] = False
    assert np.all(same_batch[:, past] > 0.0), name
    assert np.all(size[0, :, 1] == 0.0) and np.all(size[1, :, 0] == 0.0)  # rows don't mix


# ----------------------------------------------------------------------------------------------
# Mask builders.


def test_valid_from_ids_and_lengths():
  ids = jnp.array([[5, 3, 9, 0], [7, 0, 0, 0]])
  expected = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
  np.testing.assert_array_equal(valid_from_ids(ids), expected)
  np.testing.assert_array_equal(valid_from_lengths(jnp.array([3, 1]), 4), expected)
  np.testing.assert_array_equal(
      valid_from_ids(jnp.array([[1, 2, 2]]), pad_id=2), np.array([[1, 0, 0]], bool)
  )


def test_padding_and_cross_masks():
  q_valid = jnp.array([[True, True, False]])
  kv_valid = jnp.array([[True, False, True, False]])
  self_mask = padding_mask(q_valid)
  assert self_mask.shape == (1, 1, 3, 3)
  np.testing.assert_array_equal(
      self_mask[0, 0], np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], bool)
  )
  cross = padding_mask(q_valid, kv_valid)
  assert cross.shape == (1, 1, 3, 4)
  np.testing.assert_array_equal(
      cross[0, 0], np.array([[1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]], bool)
  )


def test_causal_masks():
  np.testing.assert_array_equal(causal_mask(3)[0, 0], np.tril(np.ones((3, 3), bool)))
  assert causal_mask(3).shape == (1, 1, 3, 3)
  # Two queries appended after two cached keys: positions 2 and 3 of 4.
  np.testing.assert_array_equal(
      causal_mask(2, 4)[0, 0], np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  )
  pos = jnp.array([[0, 1, 2, 0, 1]])  # two packed sequences
  m = causal_mask_from_positions(pos)
  assert m.shape == (1, 1, 5, 5)
  np.testing.assert_array_equal(m[0, 0, 4], np.array([1, 1, 0, 1, 1], bool))
  q_pos, kv_pos = jnp.array([[3]]), jnp.arange(5)[None]
  np.testing.assert_array_equal(
      causal_mask_from_positions(q_pos, kv_pos)[0, 0, 0], np.array([1, 1, 1, 1, 0], bool)
  )


def test_segment_and_combined_masks():
  seg = jnp.array([[1, 1, 2, 2, 0]])
  m = segment_mask(seg)
  expected = np.array(
      [
          [1, 1, 0, 0, 0],
          [1, 1, 0, 0, 0],
          [0, 0, 1, 1, 0],
          [0, 0, 1, 1, 0],
          [0, 0, 0, 0, 1],
      ],
      bool,
  )
  np.testing.assert_array_equal(m[0, 0], expected)
  np.testing.assert_array_equal(
      segment_mask(jnp.array([[1, 2]]), jnp.array([[2, 2, 1]]))[0, 0],
      np.array([[0, 0, 1], [1, 1, 0]], bool),
  )
  packed_causal = combine_masks(m, None, causal_mask(5))
  np.testing.assert_array_equal(packed_causal[0, 0], expected & np.tril(np.ones((5, 5), bool)))
  assert combine_masks(None, None) is None
  only = causal_mask(2)
  assert combine_masks(None, only) is only


# ----------------------------------------------------------------------------------------------
# MultiHeadAttention and the KV cache.

D = 16


def _mha(num_kv_heads, use_rope=False, **kw):
  return MultiHeadAttention(
      num_heads=4, head_dim=4, num_kv_heads=num_kv_heads, use_rope=use_rope, **kw
  )


def _init(module, *args, seed=0, **kwargs):
  """Random params (biases too) from numpy: shapes via eval_shape, no compiled initialiser."""
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape) / math.sqrt(D), s.dtype), shapes
  )


def _empty_cache(module, batch, max_len):
  """The zero cache that ``init(..., decode=True)`` would allocate."""
  shapes = jax.eval_shape(
      functools.partial(module.init, decode=True), jax.random.key(0), jnp.zeros((batch, max_len, D))
  )["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _x(length=6, seed=3):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((2, length, D)), jnp.float32)


def test_mha_param_shapes_and_matches_functional_attention():
  mha = _mha(2)
  x = _x()
  params = _init(mha, x)
  assert jax.tree.map(jnp.shape, params) == {
      "query": {"kernel": (D, 4, 4), "bias": (4, 4)},
      "key": {"kernel": (D, 2, 4), "bias": (2, 4)},
      "value": {"kernel": (D, 2, 4), "bias": (2, 4)},
      "out": {"kernel": (4, 4, D), "bias": (D,)},
  }
  boxed = jax.eval_shape(mha.init, jax.random.key(0), x)["params"]
  names = {k: {n: b.names for n, b in d.items()} for k, d in boxed.items()}
  assert names == {
      "query": {"kernel": ("embed", "heads", "head_dim"), "bias": ("heads", "head_dim")},
      "key": {"kernel": ("embed", "kv_heads", "head_dim"), "bias": ("kv_heads", "head_dim")},
      "value": {"kernel": ("embed", "kv_heads", "head_dim"), "bias": ("kv_heads", "head_dim")},
      "out": {"kernel": ("heads", "head_dim", "embed"), "bias": ("embed",)},
  }
  p = jax.tree.map(np.asarray, params)
  mask = causal_mask(6)
  out = jax.jit(mha.apply)({"params": p}, x, mask=mask)
  x = np.asarray(x, np.float64)
  q = np.einsum("bld,dnh->blnh", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bld,dnh->blnh", x, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bld,dnh->blnh", x, p["value"]["kernel"]) + p["value"]["bias"]
  ref, _ = _numpy_attention(q, k, v, np.asarray(mask))
  ref = np.einsum("blnh,nhd->bld", ref, np.asarray(p["out"]["kernel"])) + p["out"]["bias"]
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(
    "num_kv_heads,use_rope",
    [(4, False), (2, False), (2, True)],  # MHA with RoPE: the prefill test below
    ids=["mha", "gqa", "gqa-rope"],
)
def test_cached_decoding_equals_full_causal_forward(num_kv_heads, use_rope):
  mha = _mha(num_kv_heads, use_rope)
  x = _x()
  length, max_len = x.shape[1], 8  # a cache longer than the sequence: the tail stays hidden
  params = _init(mha, x)
  full = jax.jit(mha.apply)({"params": params}, x, mask=causal_mask(length))
  cache = _empty_cache(mha, 2, max_len)
  assert cache["cached_key"].shape == (2, max_len, num_kv_heads, 4)

  step = jax.jit(lambda c, tok: mha.apply(
      {"params": params, "cache": c}, tok, decode=True, mutable=["cache"]))
  outs = []
  for t in range(length):
    out, mutated = step(cache, x[:, t : t + 1])
    cache = mutated["cache"]
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)
  assert int(cache["cache_index"]) == length


def test_prefill_then_single_tokens_equals_full_forward():
  mha = _mha(4, use_rope=True)
  x = _x()
  params = _init(mha, x)
  full = jax.jit(mha.apply)({"params": params}, x, mask=causal_mask(6))
  cache = _empty_cache(mha, 2, 6)
  step = jax.jit(lambda c, chunk: mha.apply(
      {"params": params, "cache": c}, chunk, decode=True, mutable=["cache"]))
  outs = []
  for chunk in (x[:, :3], x[:, 3:4], x[:, 4:5], x[:, 5:6]):
    out, mutated = step(cache, chunk)
    cache = mutated["cache"]
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_cross_attention_uses_kv_input():
  mha = _mha(4)
  x, enc = _x(4), _x(6, seed=9)
  params = _init(mha, x, enc)
  kv_valid = jnp.array([[True] * 6, [True] * 3 + [False] * 3])
  mask = padding_mask(jnp.ones((2, 4), bool), kv_valid)
  apply = jax.jit(mha.apply)
  out = apply({"params": params}, x, enc, mask=mask)
  assert out.shape == (2, 4, D)
  # Changing padded encoder positions of row 1 changes nothing; a real position does.
  np.testing.assert_array_equal(
      apply({"params": params}, x, enc.at[1, 3:].set(9.0), mask=mask), out
  )
  assert not np.allclose(apply({"params": params}, x, enc.at[1, 2].set(9.0), mask=mask), out)
  with pytest.raises(ValueError, match="decode=True caches self-attention only"):
    mha.apply({"params": params}, x, enc, decode=True)


def test_sow_weights_sum_to_one():
  mha = _mha(2)
  x = _x()
  params = _init(mha, x)
  mask = causal_mask(6)
  out, state = jax.jit(
      lambda p: mha.apply({"params": p}, x, mask=mask, sow_weights=True, mutable=["intermediates"])
  )(params)
  (w,) = state["intermediates"]["attention_weights"]
  assert w.shape == (2, 4, 6, 6)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  assert np.all(np.asarray(w)[:, :, ~np.tril(np.ones((6, 6), bool))] == 0.0)
  np.testing.assert_allclose(out, jax.jit(mha.apply)({"params": params}, x, mask=mask), atol=1e-6)


def test_attention_dropout_only_when_not_deterministic():
  mha = _mha(4, dropout_rate=0.5)
  x = _x()
  params = _init(mha, x)
  apply = jax.jit(mha.apply, static_argnames="deterministic")
  a = apply({"params": params}, x)
  b = apply({"params": params}, x, deterministic=True)
  np.testing.assert_array_equal(a, b)
  # "rbg" keys: dropout behaves the same, and compiles several times faster than threefry.
  rng = lambda i: {"dropout": jax.random.key(i, impl="rbg")}
  c = apply({"params": params}, x, deterministic=False, rngs=rng(1))
  c2 = apply({"params": params}, x, deterministic=False, rngs=rng(2))
  assert not np.allclose(a, c) and not np.allclose(c, c2)


# ----------------------------------------------------------------------------------------------
# Bad input.


def test_bad_shapes_raise_useful_errors():
  q, key, v = _qkv(4, 2)
  with pytest.raises(ValueError, match=r"query head dim 8 differs from key head dim 6"):
    dot_product_attention(q, key[..., :6], v[..., :6])
  q3, key3, v3 = _qkv(4, 3)
  with pytest.raises(ValueError, match=r"N=4 must be a multiple of .*K=3"):
    dot_product_attention(q3, key3, v3)
  with pytest.raises(ValueError, match=r"mask must have rank 4.*\[2, 4, 5, 7\].*\(2, 7\)"):
    dot_product_attention(q, key, v, mask=jnp.ones((B, S), bool))
  with pytest.raises(ValueError, match=r"mask of shape \(2, 1, 5, 3\) does not broadcast"):
    dot_product_attention(q, key, v, mask=jnp.ones((B, 1, T, 3), bool))
  with pytest.raises(ValueError, match=r"mask must be boolean.*int32"):
    dot_product_attention(q, key, v, mask=jnp.ones((B, 1, T, S), jnp.int32))
  with pytest.raises(ValueError, match=r"bias must have rank 4"):
    dot_product_attention(q, key, v, bias=jnp.zeros((T, S)))
  with pytest.raises(ValueError, match=r"key and value shapes differ"):
    dot_product_attention(q, key, v[:, :3])
  with pytest.raises(ValueError, match=r"implementation must be one of"):
    dot_product_attention(q, key, v, implementation="flash")
  with pytest.raises(ValueError, match=r"num_heads=4 must be a multiple of num_kv_heads=3"):
    _mha(3).init(jax.random.key(0), _x())


def test_cudnn_on_cpu_raises():
  assert jax.default_backend() == "cpu"
  q, key, v = _qkv(4, 2, dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match=r"'cudnn' needs an NVIDIA GPU.*'cpu'.*'xla'"):
    dot_product_attention(q, key, v, implementation="cudnn")
  # None picks the einsum path on CPU, even for bf16.
  assert attn_lib.default_implementation(jnp.bfloat16) == "xla"
  out = _attention(q, key, v)
  assert out.dtype == jnp.bfloat16


@pytest.fixture
def fake_gpu(monkeypatch):
  """Pretend the backend is a GPU and route the cuDNN call to jax's XLA implementation.

  This exercises the cuDNN branch (validation, argument plumbing, mask layout) on CPU; the
  numerics of real cuDNN are checked only on a GPU machine.
  """
  calls = []
  real = jax.nn.dot_product_attention

  def fake(query, key, value, bias=None, mask=None, *, implementation=None, **kw):
    calls.append(dict(implementation=implementation, mask=mask, bias=bias, dtype=query.dtype))
    t, s = query.shape[1], key.shape[1]
    for x in (mask, bias):  # what cuDNN itself insists on
      assert x is None or (x.ndim == 4 and x.shape[2:] == (t, s)), x.shape
    assert bias is None or bias.dtype == query.dtype
    return real(query, key, value, bias=bias, mask=mask, implementation="xla", **kw)

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
  return calls


def test_cudnn_branch_validation_and_plumbing(fake_gpu):
  q32, key32, v32 = _qkv(4, 2)
  with pytest.raises(ValueError, match=r"'cudnn' needs bfloat16 or float16 inputs; got float32"):
    dot_product_attention(q32, key32, v32, implementation="cudnn")
  q, key, v = (jnp.asarray(a, jnp.bfloat16) for a in (q32, key32, v32))
  with pytest.raises(ValueError, match=r"does not support return_weights"):
    dot_product_attention(q, key, v, implementation="cudnn", return_weights=True)
  with pytest.raises(ValueError, match=r"does not support attention dropout"):
    dot_product_attention(
        q, key, v, implementation="cudnn", dropout_rate=0.1, deterministic=False,
        dropout_rng=jax.random.key(0),
    )
  assert not fake_gpu

  key_pad = valid_from_lengths(jnp.array([4, 7]), S)[:, None, None, :]  # [B, 1, 1, S]
  bias = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 1, S)), jnp.float32)

  @jax.jit  # a fresh function: nothing traced under the fake GPU leaks into other tests
  def both(q, key, v, mask, bias):
    kw = dict(mask=mask, bias=bias)
    return (
        dot_product_attention(q, key, v, implementation="cudnn", **kw),
        dot_product_attention(q, key, v, implementation="xla", **kw),
    )

  for mask in (key_pad, causal_mask(T, S)):
    out, ref = both(q, key, v, mask, bias)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=3e-2, rtol=3e-2
    )
  assert [c["implementation"] for c in fake_gpu] == ["cudnn", "cudnn"]

  # None: cuDNN for 16-bit inputs on GPU, the einsum path for float32 or when weights are asked.
  fake_gpu.clear()
  trace = lambda *a, **kw: jax.eval_shape(lambda *a: dot_product_attention(*a, **kw), *a)
  trace(q, key, v)
  assert len(fake_gpu) == 1
  trace(q32, key32, v32)
  trace(q, key, v, return_weights=True)
  assert len(fake_gpu) == 1


def test_mha_passes_bias_and_scale_to_cudnn(fake_gpu):
  """MultiHeadAttention(scale=1.0) on the cuDNN path: the bias reaches the cuDNN call (full
  ``[T, S]`` trailing dims, input dtype) and the output is the einsum path's."""
  x = _x().astype(jnp.bfloat16)
  bias = jnp.asarray(np.random.default_rng(2).standard_normal((1, 4, 6, 6)), jnp.float32)
  mk = lambda impl, scale: _mha(2, implementation=impl, scale=scale, dtype=jnp.bfloat16)  # noqa: E731
  params = _init(mk("xla", None), x)

  @jax.jit
  def run(params):
    kw = dict(mask=causal_mask(6), bias=bias)
    return tuple(
        mk(impl, scale).apply({"params": params}, x, **kw)
        for impl, scale in (("cudnn", 1.0), ("xla", 1.0), ("xla", None))
    )

  cudnn, xla, xla_default_scale = (np.asarray(a, np.float32) for a in run(params))
  assert len(fake_gpu) == 1 and fake_gpu[0]["implementation"] == "cudnn"
  assert fake_gpu[0]["bias"].shape == (1, 4, 6, 6) and fake_gpu[0]["bias"].dtype == jnp.bfloat16
  np.testing.assert_allclose(cudnn, xla, atol=3e-2, rtol=3e-2)
  assert np.abs(cudnn - xla_default_scale).max() > 0.1  # scale=1.0 is not the default
