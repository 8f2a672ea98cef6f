"""Tests for zoo.layers.norms: LayerNorm / RMSNorm with a hand-written backward.

Reference: flax's ``nn.LayerNorm(use_fast_variance=False)`` and ``nn.RMSNorm`` with autodiff
gradients; same parameter tree, values and gradients (x, scale, bias) to float32 rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from zoo.layers import norms

X = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32) * 3 + 1


def _pair(kind):
  if kind == "layernorm":
    return norms.LayerNorm(epsilon=1e-5), nn.LayerNorm(epsilon=1e-5, use_fast_variance=False)
  return norms.RMSNorm(epsilon=1e-6), nn.RMSNorm(epsilon=1e-6)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_values_and_gradients_equal_flax(kind):
  ours, ref = _pair(kind)
  params = ref.init(jax.random.key(0), X)["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: p + rng.standard_normal(p.shape).astype(np.float32), params)
  assert jax.tree.structure(nn.unbox(ours.init(jax.random.key(0), X)["params"])) == (
      jax.tree.structure(params))
  w = rng.standard_normal(X.shape).astype(np.float32)  # a cotangent reaching every element

  def loss(module, p, x):
    return jnp.sum(module.apply({"params": p}, x) * w)

  @jax.jit
  def both(p, x):
    return [jax.value_and_grad(lambda p, x, m=m: loss(m, p, x), argnums=(0, 1))(p, x)
            for m in (ours, ref)]

  (v_o, (gp_o, gx_o)), (v_r, (gp_r, gx_r)) = both(params, X)
  np.testing.assert_allclose(v_o, v_r, rtol=1e-5)
  np.testing.assert_allclose(gx_o, gx_r, atol=1e-5, rtol=1e-5)
  for name in gp_r:
    np.testing.assert_allclose(gp_o[name], gp_r[name], atol=1e-4, rtol=1e-5, err_msg=name)


def test_bfloat16_input_gives_float32_output_and_input_dtype_gradient():
  ln = norms.LayerNorm()
  x = jnp.asarray(X, jnp.bfloat16)
  params = ln.init(jax.random.key(0), x)["params"]
  y = ln.apply({"params": params}, x)
  assert y.dtype == jnp.float32
  gx = jax.grad(lambda x: ln.apply({"params": params}, x).sum())(x)
  assert gx.dtype == jnp.bfloat16
