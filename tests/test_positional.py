"""Tests for zoo.layers.positional: sinusoidal tables, 2-D sincos, learned tables, RoPE.

References are the papers' formulas written out in numpy with explicit loops; RoPE is also
checked by its defining property (scores depend on relative position only).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.layers.positional import (
  LearnedPositionEmbedding,
  apply_rope,
  interpolate_table,
  sincos_2d,
  sinusoid_at,
  sinusoidal_encoding,
)

# Jitted: one compilation per shape instead of one per primitive (op-by-op dispatch).
_table = jax.jit(sinusoidal_encoding, static_argnums=(0, 1), static_argnames="layout")
_sinusoid_at = jax.jit(sinusoid_at, static_argnums=1)
_sincos_2d = jax.jit(sincos_2d, static_argnums=(0, 1, 2))
_interpolate = jax.jit(interpolate_table, static_argnums=(1, 2))
_rope = jax.jit(apply_rope)


def _paper_table(length, dim, base=10000.0):
  """Section 3.5: PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(same angle)."""
  pe = np.zeros((length, dim))
  for pos in range(length):
    for i in range(dim // 2):
      angle = pos / base ** (2 * i / dim)
      pe[pos, 2 * i] = math.sin(angle)
      pe[pos, 2 * i + 1] = math.cos(angle)
  return pe


@pytest.mark.parametrize("length,dim", [(50, 16), (8, 64), (1, 2)])
def test_sinusoidal_table_equals_paper_formula(length, dim):
  table = _table(length, dim)
  assert table.shape == (length, dim) and table.dtype == jnp.float32
  # float32 angles: error grows like pos * eps.
  np.testing.assert_allclose(table, _paper_table(length, dim), atol=1e-5)


def test_sinusoidal_table_landmarks():
  table = np.asarray(_table(10, 8))
  np.testing.assert_allclose(table[0], [0, 1] * 4, atol=0)  # sin(0)=0 even, cos(0)=1 odd
  np.testing.assert_allclose(table[:, 0], np.sin(np.arange(10)), atol=1e-6)  # wavelength 2*pi
  # The slowest pair (i = d/2 - 1) has wavelength 2*pi * 10000^((d-2)/d).
  np.testing.assert_allclose(table[:, 6], np.sin(np.arange(10) / 10000 ** (6 / 8)), atol=1e-6)


def test_split_layout_and_arbitrary_positions():
  length, dim = 12, 16
  paper = _paper_table(length, dim)
  split = _table(length, dim, layout="split")
  # All sines first, then all cosines, same frequencies.
  np.testing.assert_allclose(split, np.concatenate([paper[:, 0::2], paper[:, 1::2]], -1), atol=1e-5)
  pos = jnp.array([[3, 0, 11], [7, 7, 1]])
  at = _sinusoid_at(pos, dim)
  assert at.shape == (2, 3, dim)
  np.testing.assert_allclose(at, paper[np.asarray(pos)], atol=1e-5)
  with pytest.raises(ValueError, match="even dim; got 7"):
    sinusoidal_encoding(4, 7)
  with pytest.raises(ValueError, match="layout must be"):
    sinusoidal_encoding(4, 8, layout="blocked")


def _mae_sincos_2d(h, w, dim):
  """MAE's get_2d_sincos_pos_embed, re-derived: meshgrid(w, h) puts the column half first."""
  grid = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))

  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def test_sincos_2d_matches_mae_table():
  h, w, dim = 3, 4, 16
  table = np.asarray(_sincos_2d(h, w, dim))
  assert table.shape == (h * w, dim)
  np.testing.assert_allclose(table, _mae_sincos_2d(h, w, dim), atol=1e-6)
  # Spelled out for one patch: row y=2, column x=1 is patch 2*w + 1.
  omega = 1.0 / 10000 ** (np.arange(4) / 4)
  y, x = 2, 1
  expected = np.concatenate(
      [np.sin(x * omega), np.cos(x * omega), np.sin(y * omega), np.cos(y * omega)]
  )
  np.testing.assert_allclose(table[y * w + x], expected, atol=1e-6)
  with pytest.raises(ValueError, match="divisible by 4; got 6"):
    sincos_2d(2, 2, 6)


def test_learned_position_embedding_lookups():
  module = LearnedPositionEmbedding(max_len=10, features=8)
  positions = jnp.array([[0, 3, 9], [2, 2, 1]])
  boxed = jax.eval_shape(module.init, jax.random.key(0), positions)["params"]["embedding"]
  assert boxed.value.shape == (10, 8) and boxed.names == ("positions", "embed")
  table = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
  out = module.apply({"params": {"embedding": table}}, positions)
  assert out.shape == (2, 3, 8)
  np.testing.assert_array_equal(out, table[np.asarray(positions)])
  bf16 = LearnedPositionEmbedding(max_len=10, features=8, dtype=jnp.bfloat16)
  assert bf16.apply({"params": {"embedding": table}}, positions).dtype == jnp.bfloat16


def test_interpolate_table():
  table = jnp.asarray(np.random.default_rng(0).standard_normal((12, 4)), jnp.float32)
  assert interpolate_table(table, (3, 4), (3, 4)) is table
  const = jnp.full((12, 4), 0.5)
  resized = _interpolate(const, (3, 4), (6, 2))
  assert resized.shape == (12, 4)
  np.testing.assert_allclose(resized, 0.5, atol=1e-6)
  assert _interpolate(table, (3, 4), (5, 5)).shape == (25, 4)


# ----------------------------------------------------------------------------------------------
# RoPE.


def _rope_numpy(x, positions, base=10000.0):
  """Rotate-half RoPE: pair (i, i + H/2) rotated by angle pos * base^(-2i/H)."""
  x = np.asarray(x, np.float64)
  h = x.shape[-1]
  out = np.empty_like(x)
  for b in range(x.shape[0]):
    for l in range(x.shape[1]):
      for i in range(h // 2):
        theta = positions[b][l] * base ** (-2 * i / h)
        c, s = math.cos(theta), math.sin(theta)
        a, bb = x[b, l, :, i], x[b, l, :, i + h // 2]
        out[b, l, :, i] = a * c - bb * s
        out[b, l, :, i + h // 2] = a * s + bb * c
  return out


def test_rope_matches_rotation_formula_and_positions_layouts():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
  pos_l = np.arange(5)
  pos_bl = np.stack([np.arange(5), np.array([4, 0, 9, 2, 2])])
  out_l = _rope(x, pos_l)
  assert out_l.shape == x.shape and out_l.dtype == jnp.float32
  np.testing.assert_allclose(out_l, _rope_numpy(x, [pos_l, pos_l]), atol=1e-5)
  np.testing.assert_allclose(_rope(x, np.tile(pos_l, (2, 1))), out_l, atol=0)
  np.testing.assert_allclose(_rope(x, pos_bl), _rope_numpy(x, pos_bl), atol=1e-5)
  # Position 0 is the identity; the layout pairs i with i + H/2.
  np.testing.assert_allclose(_rope(x, np.zeros(5, int))[:, :], x, atol=0)
  bf16 = _rope(jnp.asarray(x, jnp.bfloat16), pos_l)
  assert bf16.dtype == jnp.bfloat16


def test_rope_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(1)
  h = 16
  q = rng.standard_normal(h).astype(np.float32)
  k = rng.standard_normal(h).astype(np.float32)
  starts = np.array([0, 1, 5, 17, 100, 333])

  def score(m, n):
    # All pairs at once: batch of len(m), one position each.
    rq = _rope(jnp.broadcast_to(q, (len(m), 1, 1, h)), jnp.asarray(m)[:, None])
    rk = _rope(jnp.broadcast_to(k, (len(n), 1, 1, h)), jnp.asarray(n)[:, None])
    return np.asarray(jnp.sum(rq * rk, axis=(1, 2, 3)))

  per_offset = {}
  for offset in (-7, -1, 0, 2, 11):
    s = score(starts + offset, starts)  # m - n = offset at every start
    np.testing.assert_allclose(s, s[0], atol=2e-4, rtol=1e-4)
    per_offset[offset] = s[0]
  np.testing.assert_allclose(per_offset[0], q @ k, rtol=1e-5)
  # ...and it does depend on the offset (so the check above can fail).
  values = np.array(list(per_offset.values()))
  assert np.min(np.abs(values[:, None] - values[None, :]) + np.eye(len(values))) > 1e-3


def test_rope_preserves_norms():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 6, 2, 8)).astype(np.float32) * 3.0
  out = _rope(x, rng.integers(0, 1000, size=(2, 6)))
  np.testing.assert_allclose(
      np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5
  )
  assert not np.allclose(out, x)


def test_rope_bad_input():
  with pytest.raises(ValueError, match=r"\[batch, length, heads, head_dim\]; got \(2, 5, 8\)"):
    apply_rope(jnp.zeros((2, 5, 8)), jnp.arange(5))
  with pytest.raises(ValueError, match="even head_dim; got 7"):
    apply_rope(jnp.zeros((1, 5, 1, 7)), jnp.arange(5))
  with pytest.raises(ValueError, match="positions length 4 does not match sequence length 5"):
    apply_rope(jnp.zeros((1, 5, 1, 8)), jnp.arange(4))
