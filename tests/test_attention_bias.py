"""Tests for the additive attention bias and the logits scale: ``MultiHeadAttention(scale=...)``,
``bias=``, ``BlockInputs.bias`` / ``cross_bias``, through the KV cache and a scanned stack.

References: a float64 numpy softmax(q k^T * scale + bias) v written here; properties: a zero bias
changes nothing, a -1e9 bias hides what a mask hides, cached decoding == full forward, scan ==
loop == remat (values and gradients, the bias's included).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from zoo.layers import attention as attn_lib
from zoo.layers.attention import MultiHeadAttention
from zoo.layers.blocks import BlockConfig, BlockInputs, DecoderBlock
from zoo.layers.masks import causal_mask, padding_mask
from zoo.layers.stack import Stack, scan_params, unscan_params

B, T, D, N, K, H = 2, 6, 16, 4, 2, 4
MAX_LEN = 8  # KV cache length, longer than T: the unwritten tail stays hidden


def _random_params(module, *args, seed=0, **kwargs):
  """Params (biases too) with the module's shapes, filled from numpy: no compiled initialiser."""
  init = lambda rng: module.init(rng, *args, **kwargs)  # flags stay Python values
  shapes = nn.unbox(jax.eval_shape(init, jax.random.key(0))["params"])
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if "scale" in jax.tree_util.keystr(path):  # norm scales near one
      return jnp.asarray(1.0 + 0.1 * rng.standard_normal(s.shape), s.dtype)
    return jnp.asarray(rng.standard_normal(s.shape) / math.sqrt(D), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _x(length=T, seed=3):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((B, length, D)), jnp.float32)


def alibi(num_heads, q_positions, kv_positions):
  """ALiBi (Press et al. 2022): ``-m_n * (q - k)``, slopes ``m_n = 2^(-8 (n + 1) / N)``,
  ``[1, N, T, S]`` float32 (numpy)."""
  slopes = 2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads)
  distance = np.asarray(q_positions)[:, None] - np.asarray(kv_positions)[None, :]
  return (-slopes[:, None, None] * distance)[None].astype(np.float32)


def _random_bias(shape, seed=5):
  return (2.0 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _numpy_mha(x, p, mask, bias, scale):
  """Independent reference: float64, heads repeated, softmax(q k^T * scale + bias, masked) v."""
  x = np.asarray(x, np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  proj = lambda name: np.einsum("btd,dnh->btnh", x, p[name]["kernel"]) + p[name]["bias"]  # noqa: E731
  q, k, v = proj("query"), proj("key"), proj("value")
  k, v = np.repeat(k, N // K, axis=2), np.repeat(v, N // K, axis=2)
  logits = np.einsum("btnh,bsnh->bnts", q, k) * scale + np.asarray(bias, np.float64)
  logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bnts,bsnh->btnh", w, v)
  return np.einsum("btnh,nhd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def _mha(impl, **kw):
  return MultiHeadAttention(num_heads=N, head_dim=H, num_kv_heads=K, implementation=impl, **kw)


# ----------------------------------------------------------------------------------------------
# MultiHeadAttention: bias and scale against numpy, for the einsum and the blockwise path.


BIASES = {
    "zeros": np.zeros((1, N, T, T), np.float32),
    "alibi": alibi(N, np.arange(T), np.arange(T)),  # [1, N, T, T]: one per head
    "random": _random_bias((B, N, T, T)),  # a different value at every (b, n, t, s)
    "key_only": _random_bias((B, 1, 1, T), seed=6),  # broadcast over heads and queries
}


def _mha_outputs(impl):
  """{name: [B, T, D]} for no bias, each of BIASES, and scale=1.0 with the random bias."""
  x = _x()
  params = _random_params(_mha(impl), x)
  mask = causal_mask(T)

  @jax.jit
  def run(params, x, biases):
    out = {"none": _mha(impl).apply({"params": params}, x, mask=mask)}
    for name, bias in biases.items():
      out[name] = _mha(impl).apply({"params": params}, x, mask=mask, bias=bias)
    out["scale1"] = _mha(impl, scale=1.0).apply(
        {"params": params}, x, mask=mask, bias=biases["random"]
    )
    return out

  # A 4-wide block: the 6 queries and keys are two blocks each on the chunked path.
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(attn_lib, "CHUNK_SIZE", 4)
    out = run(params, x, {k: jnp.asarray(v) for k, v in BIASES.items()})
  return x, params, np.asarray(mask), jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module", params=["xla", "chunked"])
def mha_outputs(request):
  return _mha_outputs(request.param)


def test_zero_bias_equals_no_bias_exactly(mha_outputs):
  *_, out = mha_outputs
  np.testing.assert_array_equal(out["zeros"], out["none"])


@pytest.mark.parametrize("name", ["alibi", "random", "key_only"])
def test_bias_matches_numpy_reference(mha_outputs, name):
  x, params, mask, out = mha_outputs
  ref = _numpy_mha(x, params, mask, BIASES[name], 1.0 / math.sqrt(H))
  np.testing.assert_allclose(out[name], ref, atol=2e-5, rtol=2e-5)
  assert not np.allclose(out[name], out["none"], atol=1e-3)  # the bias did something


def test_scale_one_differs_from_default_and_matches_reference(mha_outputs):
  x, params, mask, out = mha_outputs
  ref = _numpy_mha(x, params, mask, BIASES["random"], 1.0)  # T5: no 1/sqrt(H)
  np.testing.assert_allclose(out["scale1"], ref, atol=2e-5, rtol=2e-5)
  assert not np.allclose(out["scale1"], out["random"], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# The KV cache: rows of the call's tokens, columns of every cache slot.


def _decode(module, variables, chunks, biases, **kw):
  """Runs ``chunks`` through ``module`` with a fresh cache; returns the outputs concatenated."""
  shapes = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((B, MAX_LEN, D)), decode=True, **kw)
  )
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
  step = jax.jit(lambda cache, chunk, bias: module.apply(
      {**variables, "cache": cache}, chunk, bias=bias, decode=True, mutable=["cache"]))
  outs = []
  for chunk, bias in zip(chunks, biases):
    out, mutated = step(cache, chunk, bias)
    cache = mutated["cache"]
    outs.append(out)
  return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_cached_decode_with_bias_equals_full_forward(impl, monkeypatch):
  monkeypatch.setattr(attn_lib, "CHUNK_SIZE", 3)  # the 8-slot cache is 3 key blocks
  mha = _mha(impl, use_rope=True)
  x = _x()
  params = _random_params(mha, x)
  # A bias over every (query slot, cache slot) pair: ALiBi plus noise, so a row or column
  # taken from the wrong place shows.
  slots = np.arange(MAX_LEN)
  full_bias = jnp.asarray(alibi(N, slots, slots) + _random_bias((B, N, MAX_LEN, MAX_LEN)))
  full = jax.jit(mha.apply)({"params": params}, x, mask=causal_mask(T),
                            bias=full_bias[:, :, :T, :T])
  unbiased = jax.jit(mha.apply)({"params": params}, x, mask=causal_mask(T))
  assert not np.allclose(full, unbiased, atol=1e-3)

  # A prefill of 3, then one token at a time: rows of this call's slots, all MAX_LEN columns.
  bounds = [(0, 3), (3, 4), (4, 5), (5, 6)]
  out = _decode(mha, {"params": params}, [x[:, a:b] for a, b in bounds],
                [full_bias[:, :, a:b, :] for a, b in bounds])
  np.testing.assert_allclose(out, full, atol=1e-5, rtol=1e-5)


def test_cached_decode_bias_of_the_wrong_length_is_a_clear_error():
  mha = _mha("xla")
  x = _x()
  params = _random_params(mha, x)
  cache = jax.eval_shape(
      lambda: mha.init(jax.random.key(0), jnp.zeros((B, MAX_LEN, D)), decode=True)
  )["cache"]
  written_so_far = jnp.zeros((1, N, 1, 3))  # columns of the written slots only: wrong
  message = (r"decoding with a KV cache, bias must broadcast to \[B, N, T, max_len\] = "
             r"\[B, N, 1, 8\].*every cache slot 0..7.*\(1, 4, 1, 3\)")
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda c: mha.apply({"params": params, "cache": c}, x[:, :1],
                                       bias=written_so_far, decode=True, mutable=["cache"]), cache)


# ----------------------------------------------------------------------------------------------
# Blocks and stacks: BlockInputs.bias / cross_bias, BlockConfig.attention_scale.


CFG = BlockConfig(d_model=D, num_heads=N, mlp_dim=32, num_kv_heads=K)
S = 5  # encoder length for cross-attention


def test_block_biases_of_minus_1e9_hide_what_masks_hide():
  """A bias of -1e9 where a mask says False gives the masked block: each bias reaches its own
  attention, with its T and S axes the right way round."""
  block = DecoderBlock(CFG, cross_attention=True)
  x, enc = _x(), _x(S, seed=4)
  src_valid = jnp.array([[True] * S, [True] * 2 + [False] * (S - 2)])
  causal, cross = causal_mask(T), padding_mask(jnp.ones((B, T), bool), src_valid)
  to_bias = lambda m: jnp.where(m, 0.0, -1e9)  # noqa: E731
  params = _random_params(block, x, BlockInputs(encoded=enc))

  @jax.jit
  def run(params):
    apply = lambda inputs: block.apply({"params": params}, x, inputs)  # noqa: E731
    return (
        apply(BlockInputs(mask=causal, encoded=enc, cross_mask=cross)),
        apply(BlockInputs(bias=to_bias(causal), encoded=enc, cross_bias=to_bias(cross))),
        apply(BlockInputs(mask=causal, encoded=enc)),  # cross padding visible
        apply(BlockInputs(encoded=enc, cross_mask=cross)),  # future visible
        apply(BlockInputs(mask=causal, bias=jnp.zeros((1, 1, T, T)), encoded=enc,
                          cross_mask=cross, cross_bias=jnp.zeros((B, 1, 1, S)))),
    )

  masked, biased, no_cross_mask, no_causal, zeros = run(params)
  np.testing.assert_allclose(biased, masked, atol=1e-6, rtol=1e-6)
  np.testing.assert_array_equal(zeros, masked)
  assert not np.allclose(masked, no_cross_mask, atol=1e-3)
  assert not np.allclose(masked, no_causal, atol=1e-3)


def test_block_attention_scale_reaches_attention():
  """scale=1 with queries divided by sqrt(H) is the default 1/sqrt(H) scale: the config field
  reaches both attentions and means what MultiHeadAttention's ``scale`` means."""
  block = DecoderBlock(CFG, cross_attention=True)
  t5_block = DecoderBlock(dataclasses.replace(CFG, attention_scale=1.0), cross_attention=True)
  x, enc = _x(), _x(S, seed=4)
  inputs = BlockInputs(mask=causal_mask(T), encoded=enc)
  params = _random_params(block, x, inputs)
  shrunk = jax.tree_util.tree_map_with_path(
      lambda path, a: a / math.sqrt(H) if "query" in jax.tree_util.keystr(path) else a, params
  )

  @jax.jit
  def run(params, shrunk):
    return (block.apply({"params": params}, x, inputs),
            t5_block.apply({"params": shrunk}, x, inputs),
            t5_block.apply({"params": params}, x, inputs))

  default, t5_shrunk, t5_same = run(params, shrunk)
  np.testing.assert_allclose(t5_shrunk, default, atol=1e-5, rtol=1e-5)
  assert not np.allclose(t5_same, default, atol=1e-3)


LAYERS = 3


def _stack_inputs():
  x, enc = _x(), _x(S, seed=4)
  src_valid = jnp.array([[True] * S, [True] * 3 + [False] * (S - 3)])
  return x, BlockInputs(
      mask=causal_mask(T),
      bias=jnp.asarray(alibi(N, np.arange(T), np.arange(T)) + _random_bias((1, N, T, T))),
      encoded=enc,
      cross_mask=padding_mask(jnp.ones((B, T), bool), src_valid),
      cross_bias=jnp.asarray(_random_bias((B, N, 1, S), seed=7)),
  )


def _stack_value_and_grad(scan=False, remat_policy="none"):
  """(out, d params, d bias, d cross_bias) of a decoder stack with cross-attention."""
  stack = Stack(DecoderBlock, CFG, LAYERS, scan=scan, remat_policy=remat_policy,
                block_kwargs=(("cross_attention", True),))

  def loss(params, bias, cross_bias, x, inputs):
    inputs = inputs.replace(bias=bias, cross_bias=cross_bias)
    out = stack.apply({"params": params}, x, inputs)
    return jnp.sum(jnp.sin(out)), out

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def test_stack_scan_loop_and_remat_agree_with_a_bias_computed_once():
  x, inputs = _stack_inputs()
  loop = Stack(DecoderBlock, CFG, LAYERS, block_kwargs=(("cross_attention", True),))
  params = _random_params(loop, x, inputs, seed=1)
  args = (inputs.bias, inputs.cross_bias, x, inputs)
  (_, out), (g_params, g_bias, g_cross) = _stack_value_and_grad()(params, *args)
  unbiased = jax.jit(lambda p: loop.apply({"params": p}, x, inputs.replace(bias=None)))(params)
  assert not np.allclose(out, unbiased, atol=1e-3)
  for g in (g_bias, g_cross):
    assert np.all(np.isfinite(g)) and np.any(g != 0)

  for scan, policy in [(True, "none"), (True, "save_attn_mlp"), (False, "full")]:
    p = scan_params(params) if scan else params
    (_, out_b), (gp, gb, gc) = _stack_value_and_grad(scan, policy)(p, *args)
    gp = unscan_params(gp) if scan else gp
    np.testing.assert_allclose(out_b, out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(gb, g_bias, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(gc, g_cross, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_params), jax.tree.leaves(gp)):
      np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)


def test_scanned_decoder_stack_cached_decode_with_bias_equals_full_forward():
  stack = Stack(DecoderBlock, CFG, 2, scan=True)
  x = _x()
  slots = np.arange(MAX_LEN)
  full_bias = jnp.asarray(alibi(N, slots, slots) + _random_bias((1, N, MAX_LEN, MAX_LEN)))
  params = _random_params(stack, x, BlockInputs(), seed=2)
  forward = jax.jit(lambda p, bias: stack.apply(
      {"params": p}, x, BlockInputs(mask=causal_mask(T), bias=bias)))
  full = forward(params, full_bias[:, :, :T, :T])
  assert not np.allclose(full, forward(params, jnp.zeros((1, 1, 1, 1))), atol=1e-3)

  init = lambda: stack.init(  # noqa: E731
      jax.random.key(0), jnp.zeros((B, MAX_LEN, D)), BlockInputs(bias=full_bias), decode=True)
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(init)["cache"])
  step = jax.jit(lambda cache, tok, bias: stack.apply(
      {"params": params, "cache": cache}, tok, BlockInputs(bias=bias), decode=True,
      mutable=["cache"]))
  outs = []
  for t in range(T):
    out, mutated = step(cache, x[:, t : t + 1], full_bias[:, :, t : t + 1, :])
    cache = mutated["cache"]
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)
