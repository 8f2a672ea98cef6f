"""Position information: fixed sinusoidal tables, learned tables, rotary embeddings (RoPE), and
the PyTorch-exact bicubic resize of a learned patch table (:func:`interpolate_table`).

Every function takes explicit positions where it can, so packed sequences (positions restart
per segment) and cached decoding (positions continue from the cache index) work unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo import sharding as sh

Array = jax.Array
SinusoidLayout = Literal["interleaved", "split"]


def sinusoid_at(
    positions: Array,
    dim: int,
    *,
    base: float = 10000.0,
    layout: SinusoidLayout = "interleaved",
) -> Array:
  """Sinusoidal encodings of arbitrary positions: ``[...]`` -> ``[..., dim]`` float32.

  Frequency i (of dim/2) has wavelength ``base ** (2i / dim)``. ``layout="interleaved"`` is the
  paper's (sin on even, cos on odd dimensions); ``"split"`` puts all sines first, then all
  cosines (tensor2tensor / Marian).
  """
  if dim % 2:
    raise ValueError(f"sinusoidal encodings need an even dim; got {dim}.")
  inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  if layout == "interleaved":
    return jnp.stack([sin, cos], axis=-1).reshape(*angles.shape[:-1], dim)
  if layout == "split":
    return jnp.concatenate([sin, cos], axis=-1)
  raise ValueError(f"layout must be 'interleaved' or 'split'; got {layout!r}.")


def sinusoidal_encoding(
    length: int, dim: int, *, base: float = 10000.0, layout: SinusoidLayout = "interleaved"
) -> Array:
  """The ``[length, dim]`` table of "Attention Is All You Need", section 3.5.

  ``PE[pos, 2i] = sin(pos / base^(2i/dim))``, ``PE[pos, 2i+1] = cos(pos / base^(2i/dim))``.
  """
  return sinusoid_at(jnp.arange(length), dim, base=base, layout=layout)


def sincos_2d(grid_h: int, grid_w: int, dim: int, *, base: float = 10000.0) -> Array:
  """Fixed 2-D sin-cos encodings for a ``grid_h x grid_w`` patch grid -> ``[h*w, dim]``.

  Row-major patches; channels ``[sin x, cos x, sin y, cos y]`` (x = column, y = row), each
  quarter with frequencies ``base^(-i/(dim/4))``: the table of MAE / MoCo v3
  (``get_2d_sincos_pos_embed``), so a fixed table copied from those checkpoints matches.
  big_vision spaces its frequencies differently.
  """
  if dim % 4:
    raise ValueError(f"2-D sincos encodings need dim divisible by 4; got {dim}.")
  ys, xs = jnp.meshgrid(jnp.arange(grid_h), jnp.arange(grid_w), indexing="ij")
  emb_x = sinusoid_at(xs.reshape(-1), dim // 2, base=base, layout="split")
  emb_y = sinusoid_at(ys.reshape(-1), dim // 2, base=base, layout="split")
  return jnp.concatenate([emb_x, emb_y], axis=-1)


class LearnedPositionEmbedding(nn.Module):
  """A trainable ``[max_len, features]`` table looked up by position."""

  max_len: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  embedding_init: Any = nn.initializers.normal(stddev=0.02)

  @nn.compact
  def __call__(self, positions: Array) -> Array:
    """``positions`` ``[...]`` int -> ``[..., features]``."""
    table = self.param(
        "embedding",
        nn.with_logical_partitioning(self.embedding_init, (sh.POSITIONS, sh.EMBED)),
        (self.max_len, self.features),
        self.param_dtype,
    )
    return jnp.take(table, positions, axis=0).astype(self.dtype)


RopeScalingKind = Literal["none", "linear", "llama3"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
  """How RoPE frequencies are stretched for a longer context than the model was trained on.

  ``"linear"`` (position interpolation, Chen et al. 2023) divides every frequency by
  ``factor``. ``"llama3"`` (Llama 3.1) divides only the low frequencies, whose wavelength
  exceeds ``original_max_len / low_freq_factor``; wavelengths below ``original_max_len /
  high_freq_factor`` stay, and those in between are interpolated smoothly. ``"none"`` keeps
  ``base^(-2i/H)``. The fields mirror Hugging Face's ``rope_parameters``.
  """

  kind: RopeScalingKind = "none"
  factor: float = 1.0
  low_freq_factor: float = 1.0  # llama3 only
  high_freq_factor: float = 4.0  # llama3 only
  original_max_len: int = 8192  # llama3 only: the pre-training context


def rope_frequencies(
    head_dim: int, base: float = 10000.0, scaling: RopeScaling | None = None
) -> Array:
  """``[head_dim // 2]`` float32 inverse frequencies ``base^(-2i/head_dim)``, then ``scaling``."""
  inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if scaling is None or scaling.kind == "none":
    return inv_freq
  if scaling.kind == "linear":
    return inv_freq / scaling.factor
  if scaling.kind == "llama3":
    # Hugging Face's _compute_llama3_parameters, written as one interpolation weight.
    old = scaling.original_max_len
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    wavelen = 2 * jnp.pi / inv_freq
    smooth = jnp.clip((old / wavelen - low) / (high - low), 0.0, 1.0)
    smooth = jnp.where(wavelen > old / low, 0.0, jnp.where(wavelen < old / high, 1.0, smooth))
    return (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
  raise ValueError(f"rope scaling kind must be one of {RopeScalingKind.__args__}; got "
                   f"{scaling.kind!r}.")


def apply_rope(
    x: Array,
    positions: Array,
    base: float = 10000.0,
    scaling: RopeScaling | None = None,
    inv_freq: Array | None = None,
) -> Array:
  """Rotary position embedding (Su et al. 2021) on ``x`` ``[B, L, N, H]``.

  Dimension pairs ``(i, i + H/2)`` are rotated by ``positions * base^(-2i/H)`` (the
  "rotate half" layout of GPT-NeoX / LLaMA checkpoints). Since rotations compose, the dot
  product of ``rope(q, m)`` and ``rope(k, n)`` depends on ``m - n`` only, and norms are kept.

  Args:
    x: ``[B, L, N, H]`` with H even.
    positions: ``[B, L]`` or ``[L]`` integer (or float) positions.
    base: the frequency base.
    scaling: frequency scaling for long contexts (:class:`RopeScaling`); None = none.
    inv_freq: ``[H/2]`` inverse frequencies used instead of ``base`` and ``scaling`` (a layer's
      own RoPE in a stack whose layers differ, traced per layer under ``nn.scan``).

  Returns:
    ``x`` rotated, same shape and dtype.
  """
  if x.ndim != 4:
    raise ValueError(f"apply_rope expects [batch, length, heads, head_dim]; got {tuple(x.shape)}.")
  h = x.shape[-1]
  if h % 2:
    raise ValueError(f"RoPE needs an even head_dim; got {h}.")
  positions = jnp.asarray(positions, jnp.float32)
  if positions.ndim == 1:
    positions = positions[None, :]
  if positions.shape[-1] != x.shape[1]:
    raise ValueError(
        f"positions length {positions.shape[-1]} does not match sequence length {x.shape[1]}."
    )
  if inv_freq is None:
    inv_freq = rope_frequencies(h, base, scaling)
  angles = positions[:, :, None, None] * inv_freq  # [B, L, 1, H/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : h // 2], x32[..., h // 2 :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """``[n_out, n_in]`` weights of a 1-D bicubic resize with half-pixel centres.

  The same kernel (Keys, a = -0.75) and border handling (edge pixels repeat) as PyTorch's
  ``interpolate(mode="bicubic", align_corners=False)``, which timm and Hugging Face ViT use to
  resize position tables; ``jax.image.resize`` uses a = -0.5 and would not match them.
  """

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  w = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    src = (i + 0.5) * n_in / n_out - 0.5
    i0 = int(np.floor(src))
    t = src - i0
    for k, wk in zip(range(-1, 3), (far(t + 1), near(t), near(1 - t), far(2 - t))):
      w[i, min(max(i0 + k, 0), n_in - 1)] += wk
  return w


def interpolate_table(
    table: Array | np.ndarray,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    *,
    num_prefix: int = 0,
):
  """Resize the patch grid of a position table to ``new_grid`` (PyTorch/timm bicubic).

  Args:
    table: ``[..., num_prefix + h*w, D]``: ``num_prefix`` rows that belong to no patch (a
      class token's), then the ``h x w`` grid, row-major.
    old_grid: ``(h, w)`` of ``table``.
    new_grid: the ``(h', w')`` to resize to.
    num_prefix: leading rows kept as they are.

  Returns:
    ``[..., num_prefix + h'*w', D]`` in ``table``'s dtype (``table`` itself when the grids
    agree): a NumPy array for a NumPy table, else a JAX array.
  """
  if tuple(old_grid) == tuple(new_grid):
    return table
  # A NumPy table is a checkpoint being converted on the host: resize it in float64 NumPy (no
  # device, no rounding beyond the final cast). Anything else runs inside a model, usually
  # under jit: float32 with precision="highest", since TPUs would otherwise multiply in bf16.
  if isinstance(table, np.ndarray):
    xp, compute, kwargs = np, np.float64, {}
  else:
    xp, compute, kwargs = jnp, jnp.float32, {"precision": "highest"}
  lead, d = table.shape[:-2], table.shape[-1]
  rows = xp.asarray(bicubic_matrix(old_grid[0], new_grid[0]), compute)
  cols = xp.asarray(bicubic_matrix(old_grid[1], new_grid[1]), compute)
  grid = xp.asarray(table[..., num_prefix:, :], compute).reshape(*lead, *old_grid, d)
  resized = xp.einsum("ah,bw,...hwd->...abd", rows, cols, grid, **kwargs)
  resized = resized.reshape(*lead, new_grid[0] * new_grid[1], d)
  if num_prefix:
    prefix = xp.asarray(table[..., :num_prefix, :], compute)
    resized = xp.concatenate([prefix, resized], axis=-2)
  return resized.astype(table.dtype)
