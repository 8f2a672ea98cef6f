"""Tests for zoo.layers.blocks and zoo.layers.stack: pre/post-LN blocks, norms, config checks,
the named block inputs, scan == loop, remat == plain.

Shapes are tiny and every model is compiled once per variant: compilation, not arithmetic,
is what costs time here.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from zoo.layers.blocks import MLP, BlockConfig, BlockInputs, DecoderBlock, EncoderBlock, make_norm
from zoo.layers.masks import causal_mask, padding_mask
from zoo.layers.stack import Stack, scan_params, unscan_params

B, T, S, D = 2, 5, 6, 16
CFG = BlockConfig(d_model=D, num_heads=4, mlp_dim=32, num_kv_heads=2)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
  enc = jnp.asarray(rng.standard_normal((B, S, D)), jnp.float32)
  src_valid = jnp.array([[True] * S, [True] * 3 + [False] * (S - 3)])
  return x, enc, src_valid


def _random_params(module, *args, seed=0, **kwargs):
  """Params with the module's shapes, filled from numpy (no compiled initialiser)."""
  # Arguments are closed over so that Python flags (deterministic) stay Python values.
  init = lambda rng: module.init(rng, *args, **kwargs)
  shapes = nn.unbox(jax.eval_shape(init, jax.random.key(0))["params"])
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "scale" in name:  # norm scales near one
      return jnp.asarray(1.0 + 0.1 * rng.standard_normal(s.shape), s.dtype)
    fan_in = math.prod(s.shape[:-1]) if len(s.shape) > 1 else D
    return jnp.asarray(rng.standard_normal(s.shape) / math.sqrt(fan_in), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _three_blocks(cfg):
  """Encoder block, decoder-only block, decoder block with cross-attention, and their calls."""
  x, enc, src_valid = _inputs()
  self_mask = padding_mask(jnp.ones((B, T), bool))
  cross_mask = padding_mask(jnp.ones((B, T), bool), src_valid)
  blocks = {
      "encoder": (EncoderBlock(cfg), BlockInputs(mask=self_mask)),
      "decoder": (DecoderBlock(cfg), BlockInputs(mask=causal_mask(T))),
      "cross": (
          DecoderBlock(cfg, cross_attention=True),
          BlockInputs(mask=causal_mask(T), encoded=enc, cross_mask=cross_mask),
      ),
  }
  params = {k: _random_params(m, x, inputs) for k, (m, inputs) in blocks.items()}
  return blocks, params


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_blocks_finite_gradients_and_jit_equals_no_jit(norm_position):
  cfg = dataclasses.replace(CFG, norm_position=norm_position)
  blocks, params = _three_blocks(cfg)
  for p in params.values():  # a plain last norm, so that post-LN output is exactly normalised
    p["mlp_norm"] = {"scale": jnp.ones(D), "bias": jnp.zeros(D)}

  def loss(params, x, enc):
    outs = {}
    for name, (module, inputs) in blocks.items():
      inputs = inputs.replace(encoded=enc) if name == "cross" else inputs
      outs[name] = module.apply({"params": params[name]}, x, inputs)
    return sum(jnp.sum(jnp.sin(o)) for o in outs.values()), outs

  x, enc, _ = _inputs()
  # One compilation for all three blocks' outputs and gradients.
  (_, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
      params, x, enc
  )
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)
  for name, out in outs.items():
    assert out.shape == (B, T, D) and out.dtype == jnp.float32, name
    out = np.asarray(out)
    normalised = np.allclose(out.mean(-1), 0, atol=1e-4) and np.allclose(out.var(-1), 1, atol=1e-3)
    # Post-LN: norm(x + f(x)) is the last op. Pre-LN: x + f(norm(x)) is not normalised.
    assert normalised == (norm_position == "post"), name

  if norm_position == "post":
    # No-jit (op by op) gives the same numbers. One block is enough: op-by-op dispatch
    # compiles every primitive separately, which is what makes it slow on CPU.
    module, inputs = blocks["decoder"]
    eager = module.apply({"params": params["decoder"]}, x, inputs)
    np.testing.assert_allclose(eager, outs["decoder"], atol=1e-5, rtol=1e-5)


def test_decoder_block_is_causal_and_cross_mask_hides_padding():
  blocks, params = _three_blocks(CFG)
  module, inputs = blocks["cross"]
  x, enc, _ = _inputs()
  f = jax.jit(
      lambda x, enc: module.apply({"params": params["cross"]}, x, inputs.replace(encoded=enc))
  )
  out = np.asarray(f(x, enc))
  out_future = np.asarray(f(x.at[:, 3:].set(7.0), enc))
  np.testing.assert_array_equal(out_future[:, :3], out[:, :3])
  assert not np.allclose(out_future[:, 3:], out[:, 3:])
  out_pad = np.asarray(f(x, enc.at[1, 3:].set(7.0)))  # row 1 has 3 real source positions
  np.testing.assert_array_equal(out_pad, out)


def test_block_inputs_is_a_pytree_and_blocks_check_what_they_need():
  x, enc, _ = _inputs()
  inputs = BlockInputs(mask=causal_mask(T), encoded=enc)
  # None fields have no leaves, so a partly filled record passes through scan and remat.
  assert len(jax.tree.leaves(inputs)) == 2 and jax.tree.leaves(BlockInputs()) == []
  with pytest.raises(ValueError, match="has cross-attention: pass the encoder output"):
    jax.eval_shape(DecoderBlock(CFG, cross_attention=True).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="an EncoderBlock has no KV cache"):
    EncoderBlock(CFG).init(jax.random.key(0), x, BlockInputs(), True, True)


def test_dropout_only_when_not_deterministic():
  cfg = dataclasses.replace(
      CFG, dropout_rate=0.3, attention_dropout_rate=0.3, mlp_dropout_rate=0.3
  )
  x, _, _ = _inputs()
  block = EncoderBlock(cfg)
  params = _random_params(block, x)
  apply = jax.jit(
      lambda p, x, rng, det: block.apply(
          {"params": p}, x, deterministic=det, rngs={"dropout": rng}
      ),
      static_argnums=3,
  )
  # "rbg" keys: dropout behaves the same, and compiles several times faster than threefry.
  key = lambda i: jax.random.key(i, impl="rbg")
  det_a, det_b = apply(params, x, key(0), True), apply(params, x, key(1), True)
  np.testing.assert_array_equal(det_a, det_b)
  train_a, train_b = apply(params, x, key(0), False), apply(params, x, key(1), False)
  assert not np.allclose(train_a, det_a)
  assert not np.allclose(train_a, train_b)
  np.testing.assert_array_equal(train_a, apply(params, x, key(0), False))  # rng decides


def test_block_config_validation():
  with pytest.raises(ValueError, match=r"d_model=10 is not divisible by num_heads=3"):
    BlockConfig(d_model=10, num_heads=3, mlp_dim=8)
  assert BlockConfig(d_model=10, num_heads=3, mlp_dim=8, head_dim=4).dim_per_head == 4
  with pytest.raises(ValueError, match=r"num_heads=4 must be a multiple of num_kv_heads=3"):
    BlockConfig(d_model=16, num_heads=4, mlp_dim=8, num_kv_heads=3)
  with pytest.raises(ValueError, match=r"must be positive; got 16, 0, 8"):
    BlockConfig(d_model=16, num_heads=0, mlp_dim=8)
  with pytest.raises(ValueError, match=r"activation must be one of .*'gelu'.*; got 'swiglu'"):
    BlockConfig(d_model=16, num_heads=4, mlp_dim=8, activation="swiglu")
  with pytest.raises(ValueError, match=r"norm must be one of .*; got 'batchnorm'"):
    BlockConfig(d_model=16, num_heads=4, mlp_dim=8, norm="batchnorm")
  with pytest.raises(ValueError, match=r"norm_position must be one of .*; got 'sandwich'"):
    BlockConfig(d_model=16, num_heads=4, mlp_dim=8, norm_position="sandwich")
  with pytest.raises(dataclasses.FrozenInstanceError):
    CFG.d_model = 32
  with pytest.raises(TypeError):
    BlockConfig(16, 4, 32)  # keyword-only


def test_norms_match_numpy():
  x = np.random.default_rng(3).standard_normal((2, 3, D)).astype(np.float32) * 4 + 1
  scale = np.linspace(0.5, 1.5, D).astype(np.float32)
  eps = 1e-6

  ln = make_norm(CFG, "ln")
  ln_out = ln.apply({"params": {"scale": scale, "bias": np.full(D, 0.1, np.float32)}}, x)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  np.testing.assert_allclose(ln_out, (x - mu) / np.sqrt(var + eps) * scale + 0.1, atol=1e-5)

  rms_cfg = dataclasses.replace(CFG, norm="rmsnorm")
  rms = make_norm(rms_cfg, "rms")
  shapes = jax.eval_shape(rms.init, jax.random.key(0), x)["params"]
  assert set(shapes) == {"scale"}  # RMSNorm: no bias, no mean subtraction
  rms_out = rms.apply({"params": {"scale": scale}}, x)
  ref = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps) * scale
  np.testing.assert_allclose(rms_out, ref, atol=1e-5)
  # bf16 compute keeps float32 statistics and returns float32.
  assert rms.apply({"params": {"scale": scale}}, x.astype(jnp.bfloat16)).dtype == jnp.float32


def test_rmsnorm_block_param_tree():
  cfg = dataclasses.replace(CFG, norm="rmsnorm", use_rope=True, activation="silu")
  x, _, _ = _inputs()
  params = nn.unbox(jax.eval_shape(EncoderBlock(cfg).init, jax.random.key(0), x)["params"])
  assert set(params) == {"attn", "attn_norm", "mlp", "mlp_norm"}
  assert set(params["attn_norm"]) == {"scale"}
  assert params["mlp"]["wi"]["kernel"].shape == (D, 32)
  assert params["attn"]["key"]["kernel"].shape == (D, 2, 4)  # GQA: 2 kv heads of dim 4
  out = jax.jit(EncoderBlock(cfg).apply)({"params": _random_params(EncoderBlock(cfg), x)}, x)
  assert np.all(np.isfinite(out))


def test_mlp_matches_numpy():
  cfg = dataclasses.replace(CFG, activation="relu")
  x = np.random.default_rng(4).standard_normal((2, 3, D)).astype(np.float32)
  p = _random_params(MLP(cfg), x)
  out = MLP(cfg).apply({"params": p}, x)
  h = np.maximum(x @ np.asarray(p["wi"]["kernel"]) + np.asarray(p["wi"]["bias"]), 0)
  ref = h @ np.asarray(p["wo"]["kernel"]) + np.asarray(p["wo"]["bias"])
  np.testing.assert_allclose(out, ref, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Stack: scan == loop, remat == plain.

LAYERS = 2


# Dropout configured (but deterministic=True): a flag that remat wrongly traced would fail
# inside nn.Dropout, as it did when Stack passed negative static_argnums to nn.remat.
STACK_CFG = dataclasses.replace(CFG, dropout_rate=0.1, attention_dropout_rate=0.1)


def _stack(**kw):
  return Stack(EncoderBlock, STACK_CFG, LAYERS, **kw)


@functools.cache
def _stack_loss(**stack_kw):
  """Jitted (loss, output), grads of a stack, compiled once per stack variant."""
  stack = _stack(**stack_kw)

  def loss(params, x):
    out = stack.apply({"params": params}, x, BlockInputs(mask=causal_mask(T)), deterministic=True)
    return jnp.sum(jnp.sin(out)), out

  return jax.jit(jax.value_and_grad(loss, has_aux=True))


@functools.cache
def _loop_reference():
  x, _, _ = _inputs()
  params = _random_params(_stack(), x, BlockInputs(), seed=1)
  return x, params, _stack_loss()(params, x)


@functools.cache
def _stack_forward(**stack_kw):
  stack = _stack(**stack_kw)
  inputs = BlockInputs(mask=causal_mask(T))
  return jax.jit(lambda params, x: stack.apply({"params": params}, x, inputs, deterministic=True))


def test_stack_scan_equals_loop_both_ways():
  x, loop_params, ((_, out_loop), _) = _loop_reference()
  assert set(loop_params) == {f"layers_{i}" for i in range(LAYERS)}
  scan_init = lambda rng: _stack(scan=True).init(rng, x, BlockInputs())
  scan_shapes = nn.unbox(jax.eval_shape(scan_init, jax.random.key(0))["params"])
  stacked = scan_params(loop_params)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, scan_shapes)
  assert stacked["layers"]["mlp"]["wi"]["kernel"].shape == (LAYERS, D, 32)
  np.testing.assert_allclose(_stack_forward(scan=True)(stacked, x), out_loop, atol=1e-5, rtol=1e-5)

  # And back: the round trip is exact, and scanned params of their own run looped.
  back = unscan_params(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(loop_params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(loop_params)):
    np.testing.assert_array_equal(a, b)
  scan_own = _random_params(_stack(scan=True), x, BlockInputs(), seed=7)
  out_scan_own = _stack_forward(scan=True)(scan_own, x)
  (_, out_loop_own), _ = _stack_loss()(unscan_params(scan_own), x)
  np.testing.assert_allclose(out_loop_own, out_scan_own, atol=1e-5, rtol=1e-5)
  assert not np.allclose(out_loop_own, out_loop)  # different params, different function
  layer0, layer1 = (back[f"layers_{i}"]["mlp"]["wi"]["kernel"] for i in range(2))
  assert not np.allclose(layer0, layer1)  # layers are distinct, so their order is checked


# The scanned variant also checks scan == loop for gradients (scanned grads, unscanned).
@pytest.mark.parametrize("scan,policy", [(False, "full"), (True, "save_attn_mlp")])
def test_remat_equals_plain(scan, policy):
  x, loop_params, ((loss_a, out_a), g_a) = _loop_reference()
  params = scan_params(loop_params) if scan else loop_params
  (loss_b, out_b), g_b = _stack_loss(scan=scan, remat_policy=policy)(params, x)
  if scan:
    assert g_b["layers"]["attn"]["query"]["kernel"].shape[0] == LAYERS
    g_b = unscan_params(g_b)
  np.testing.assert_allclose(out_b, out_a, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
  assert jax.tree.structure(g_b) == jax.tree.structure(g_a)
  for a, b in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b)):
    assert np.all(np.isfinite(a)) and np.any(a != 0)
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)


def test_stack_bad_options():
  x, _, _ = _inputs()
  with pytest.raises(ValueError, match=r"remat_policy must be one of .*; got 'some'"):
    _stack(remat_policy="some").init(jax.random.key(0), x, BlockInputs())
  with pytest.raises(ValueError, match=r"layer keys are not 0..L-1"):
    scan_params({"layers_0": {"w": jnp.zeros(2)}, "layers_2": {"w": jnp.zeros(2)}})
