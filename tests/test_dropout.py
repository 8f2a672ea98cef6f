"""zoo.layers.dropout: the rate, the scale, the gradient and the one-bit saved mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from zoo.layers import dropout as dr


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_fraction_and_scale(rate):
  x = jnp.ones((1000, 1001), jnp.float32)  # an odd size: the packing pads
  y = np.asarray(dr.dropout(x, rate, jax.random.PRNGKey(0)))
  keep = dr.keep_probability(rate)
  assert abs(keep - (1 - rate)) <= 2**-17
  kept = y != 0
  # Binomial: the kept fraction within 5 standard deviations of the keep probability.
  n = y.size
  assert abs(kept.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
  np.testing.assert_allclose(y[kept], 1 / keep, rtol=1e-6)
  assert abs(y.mean() - 1.0) < 5 * np.sqrt((1 / keep - 1) / n)  # the expectation is x


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 7), (16,), (2, 8, 4)])
def test_gradient_is_the_same_mask(shape, dtype):
  rate, key = 0.3, jax.random.PRNGKey(1)
  x = jax.random.normal(jax.random.PRNGKey(2), shape, dtype) + 3.0  # no zeros
  w = jax.random.normal(jax.random.PRNGKey(3), shape, dtype)
  out, grad = jax.value_and_grad(lambda x: jnp.sum(dr.dropout(x, rate, key) * w))(x)
  y = dr.dropout(x, rate, key)
  kept = np.asarray(y) != 0
  scale = 1 / dr.keep_probability(rate)
  expected = np.where(kept, np.asarray(w, np.float32) * scale, 0.0)
  np.testing.assert_allclose(np.asarray(grad, np.float32), expected, rtol=1e-2 if dtype ==
                             jnp.bfloat16 else 1e-6)
  assert grad.dtype == dtype
  assert 0 < kept.sum() < kept.size


def test_pack_unpack_round_trip():
  keep = jax.random.bernoulli(jax.random.PRNGKey(4), 0.5, (3, 7, 5))
  packed = dr._pack(keep)
  assert packed.dtype == jnp.uint8 and packed.shape == (-(-105 // 8),)
  np.testing.assert_array_equal(dr._unpack(packed, keep.shape), keep)


def test_module_matches_flax_interface():
  x = jnp.ones((4, 64))
  module = dr.Dropout(0.5)
  np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(dr.Dropout(0.0).apply({}, x, deterministic=False), x)
  y = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  assert 0 < int((y == 0).sum()) < y.size
  with pytest.raises(flax_errors()):
    module.apply({}, x, deterministic=False)  # no "dropout" rng


def flax_errors():
  from flax import errors  # noqa: PLC0415

  return errors.InvalidRngError


def test_bad_rate_is_named():
  with pytest.raises(ValueError, match="rate must be in \\[0, 1\\); got 1.0"):
    dr.dropout(jnp.ones(3), 1.0, jax.random.PRNGKey(0))


def _residuals(drop) -> list[jax.Array]:
  """What autodiff keeps from the forward pass for the backward (the leaves of the VJP
  closure), through four dropouts of a 1M-element activation."""
  def f(x):
    for k in jax.random.split(jax.random.PRNGKey(0), 4):
      x = jnp.tanh(drop(x, k))
    return x

  _, vjp = jax.vjp(f, jnp.ones((1024, 1024), jnp.float32))
  return jax.tree_util.tree_leaves(vjp)


def test_saved_mask_is_one_bit_per_element():
  def flax_drop(x, key):
    return nn.Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": key})

  ours, theirs = _residuals(lambda x, k: dr.dropout(x, 0.1, k)), _residuals(flax_drop)
  assert sum(leaf.dtype == jnp.bool_ for leaf in theirs) == 4  # flax: a 1-byte mask each
  masks = [leaf for leaf in ours if leaf.dtype == jnp.uint8]
  assert len(masks) == 4 and all(m.size == 2**20 // 8 for m in masks)
  assert not any(leaf.dtype == jnp.bool_ for leaf in ours)
  assert sum(leaf.nbytes for leaf in ours) < sum(leaf.nbytes for leaf in theirs)
