"""Tests for zoo.layers.dense: the Einsum projection against numpy, its parameters' shapes and
logical axes, fan-in over every contracted axis, and clear errors for unsupported layouts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from zoo import sharding as sh
from zoo.layers.dense import Einsum, fan_in_init

B, T, D, N, H = 2, 3, 8, 4, 2


def _apply(module, eqn, x, seed=0):
  variables = module.init(jax.random.key(seed), eqn, x)
  params = dict(nn.unbox(variables["params"]))
  params["bias"] = params["bias"] + 0.5  # non-zero, so that adding it is checked
  return params, module.apply({"params": params}, eqn, x)


def test_einsum_matches_numpy_for_heads_out_and_dense():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((B, T, D)).astype(np.float32)
  p, q = _apply(Einsum((D, N, H), (sh.EMBED, sh.HEADS, sh.HEAD_DIM)), "BTD,DNH->BTNH", x)
  np.testing.assert_allclose(
      q, np.einsum("btd,dnh->btnh", x, p["kernel"]) + p["bias"], atol=1e-5, rtol=1e-5
  )
  y = rng.standard_normal((B, T, N, H)).astype(np.float32)
  p, out = _apply(Einsum((N, H, D), (sh.HEADS, sh.HEAD_DIM, sh.EMBED)), "BTNH,NHD->BTD", y)
  np.testing.assert_allclose(
      out, np.einsum("btnh,nhd->btd", y, p["kernel"]) + p["bias"], atol=1e-5, rtol=1e-5
  )
  dense = Einsum((D, 5), (sh.EMBED, sh.CLASSES))
  for z in (x, x[:, 0]):  # "..." takes any leading axes
    p, out = _apply(dense, "...D,DC->...C", z)
    np.testing.assert_allclose(out, z @ p["kernel"] + p["bias"], atol=1e-5, rtol=1e-5)


def test_parameters_shapes_axes_and_dtypes():
  x = jnp.zeros((B, T, D), jnp.bfloat16)
  module = Einsum((D, N, H), (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM), dtype=jnp.bfloat16)
  eqn = "BTD,DNH->BTNH"
  boxed = jax.eval_shape(lambda rng: module.init(rng, eqn, x), jax.random.key(0))["params"]
  assert boxed["kernel"].names == ("embed", "kv_heads", "head_dim")
  assert boxed["bias"].names == ("kv_heads", "head_dim")
  params = nn.unbox(boxed)
  assert params["kernel"].shape == (D, N, H) and params["bias"].shape == (N, H)
  assert params["kernel"].dtype == jnp.float32  # storage dtype stays float32
  out = jax.eval_shape(lambda p: module.apply({"params": p}, eqn, x), params)
  assert out.shape == (B, T, N, H) and out.dtype == jnp.bfloat16
  no_bias = Einsum((D, 5), (sh.EMBED, sh.VOCAB), use_bias=False)
  shapes = jax.eval_shape(lambda rng: no_bias.init(rng, "BTD,DV->BTV", x), jax.random.key(0))
  assert set(shapes["params"]) == {"kernel"}


@pytest.mark.parametrize(
    "shape,eqn,x_shape",
    [((64, 8, 8), "BD,DNH->BNH", (1, 64)), ((8, 8, 64), "BNH,NHD->BD", (1, 8, 8))],
)
def test_fan_in_is_the_product_of_the_contracted_axes(shape, eqn, x_shape):
  # LeCun normal: std = 1/sqrt(fan_in) with fan_in = 64 for both kernels. Initialised as 3-D
  # arrays they would get flax's fan-in (second-to-last axis times the rest but the last):
  # 8 * 64 for the [D, N, H] query kernel.
  module = Einsum(shape, (None,) * len(shape))
  kernel = module.init(jax.random.key(0), eqn, jnp.zeros(x_shape))["params"]["kernel"]
  assert np.asarray(nn.unbox(kernel)).std() == pytest.approx(1 / math.sqrt(64), rel=0.05)


def test_fan_in_init_is_the_flat_matrix_reshaped():
  init = nn.initializers.xavier_uniform()
  key = jax.random.key(3)
  got = fan_in_init(init, 2)(key, (4, 2, 6))
  np.testing.assert_array_equal(got, init(key, (8, 6)).reshape(4, 2, 6))


def test_unsupported_layouts_are_clear_errors():
  x = jnp.zeros((B, T, D))
  init = lambda module, eqn: module.init(jax.random.key(0), eqn, x)
  with pytest.raises(ValueError,
                     match=r"kernel_axes .* name 2 axes; the kernel shape \(8, 4, 2\) has 3"):
    init(Einsum((D, N, H), (sh.EMBED, sh.HEADS)), "BTD,DNH->BTNH")
  with pytest.raises(ValueError, match=r"names 2 kernel axes; the kernel has 3"):
    init(Einsum((D, N, H), (None,) * 3), "BTD,DN->BTN")
  with pytest.raises(ValueError, match=r"\[contracted axes..., output axes...\]"):
    init(Einsum((N, D, H), (None,) * 3), "BTD,NDH->BTNH")  # contracted axis in the middle
  with pytest.raises(ValueError, match=r"needs the output to end with them"):
    init(Einsum((D, N, H), (None,) * 3), "BTD,DNH->BNTH")
  with pytest.raises(ValueError, match=r"'<x>,<kernel>-><out>'"):
    init(Einsum((D, N), (None,) * 2), "BTD->BTN")
