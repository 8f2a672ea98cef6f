"""Position encodings side by side: the sinusoidal table, a learned table and RoPE.

* Sinusoidal (:func:`zoo.layers.positional.sinusoidal_encoding`): ``PE[0] . PE[k] =
  sum_i cos(k w_i)`` (each sin/cos pair of frequency ``w_i`` gives ``sin 0 sin kw + cos 0 cos
  kw``), so it is ``d/2`` at ``k = 0`` and decays, with ripples, as ``k`` grows.
* Learned (GPT's ``wpe/embedding``, BERT's ``embeddings/position_embeddings/embedding``): the
  same dot product read off a checkpoint's table.
* RoPE (:func:`zoo.layers.positional.apply_rope`): ``rope(q, m) . rope(k, n)`` for several
  starts ``m`` at the same offsets ``n - m``; the curves coincide because rotations compose.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.analysis import common

LEARNED_PATHS = (
    ("wpe", "embedding"),  # GPT
    ("embeddings", "position_embeddings", "embedding"),  # BERT
)


def learned_table(checkpoint: str) -> tuple[np.ndarray, str]:
  """The ``[max_len, D]`` learned position table of a checkpoint, and its parameter path."""
  import zoo

  try:
    model, params = zoo.from_pretrained(checkpoint)
  except (OSError, ValueError, KeyError) as e:
    raise common.AnalysisError(f"cannot read checkpoint {checkpoint!r}: {e}") from e
  params = params.get("params", params)
  for path in LEARNED_PATHS:
    node = params
    for key in path:
      node = node.get(key) if hasattr(node, "get") else None
      if node is None:
        break
    if node is not None:
      return np.asarray(node, np.float32), "/".join(path)
  raise common.AnalysisError(
      f"{checkpoint!r} ({type(model).__name__}) has no learned position table (looked for "
      f"{', '.join('/'.join(p) for p in LEARNED_PATHS)})."
  )


def rope_scores(
    offsets: Sequence[int], starts: Sequence[int], head_dim: int, seed: int = 0
) -> np.ndarray:
  """``[len(starts), len(offsets)]``: ``rope(q, m) . rope(k, m + offset)`` for unit ``q, k``."""
  import jax.numpy as jnp

  from zoo.layers.positional import apply_rope

  rng = np.random.default_rng(seed)
  q, k = rng.standard_normal((2, head_dim))
  q, k = q / np.linalg.norm(q), k / np.linalg.norm(k)
  offsets = np.asarray(offsets)
  out = np.zeros((len(starts), len(offsets)))
  for i, m in enumerate(starts):
    xq = jnp.asarray(np.broadcast_to(q, (1, 1, 1, head_dim)), jnp.float32)
    xk = jnp.asarray(np.broadcast_to(k, (1, len(offsets), 1, head_dim)), jnp.float32)
    rq = np.asarray(apply_rope(xq, jnp.array([m])))[0, 0, 0]
    rk = np.asarray(apply_rope(xk, jnp.asarray(m + offsets)))[0, :, 0]
    out[i] = rk @ rq
  return out


def run(
    *,
    length: int = 128,
    dim: int = 128,
    checkpoint: str | None = None,
    starts: Sequence[int] = (0, 5, 17, 40),
    seed: int = 0,
) -> dict:
  """The numbers behind the plot (see the module docstring).

  Args:
    length: positions of the sinusoidal table, and offsets ``0 .. length-1`` of every curve.
    dim: model dimension of the sinusoidal table and head dimension for RoPE.
    checkpoint: a zoo / Hugging Face GPT-2 or BERT folder (or short name) with a learned table.
    starts: RoPE query positions ``m``.
    seed: numpy seed of the RoPE ``q`` and ``k``.

  Returns:
    ``{"sinusoidal": {"table_shape", "dot_with_0"}, "learned": {...} or {"given": False}, "rope":
    {"starts", "scores"}, "offsets"}``.
  """
  from zoo.layers.positional import sinusoidal_encoding

  if length < 2 or dim < 2 or dim % 2:
    raise common.AnalysisError(f"need length >= 2 and an even dim >= 2; got {length}, {dim}.")
  offsets = np.arange(length)
  table = np.asarray(sinusoidal_encoding(length, dim))
  numbers = dict(
      offsets=offsets,
      sinusoidal=dict(dim=dim, table_shape=list(table.shape), dot_with_0=table @ table[0]),
  )
  if checkpoint is None:
    numbers["learned"] = dict(given=False, note="no learned table given (--checkpoint)")
  else:
    learned, path = learned_table(checkpoint)
    n = min(length, learned.shape[0])
    numbers["learned"] = dict(
        given=True, checkpoint=checkpoint, param=path, shape=list(learned.shape),
        dot_with_0=learned[:n] @ learned[0],
        cosine_with_0=(learned[:n] @ learned[0])
        / (np.linalg.norm(learned[:n], axis=1) * np.linalg.norm(learned[0]) + 1e-12),
    )
  numbers["rope"] = dict(
      head_dim=dim, starts=list(starts), scores=rope_scores(offsets, starts, dim, seed)
  )
  return numbers


def plot(numbers: dict):
  """Heatmap of the sinusoidal table; dot products with position 0; RoPE scores by offset."""
  plt = common.pyplot()
  offsets = np.asarray(numbers["offsets"])
  sin = numbers["sinusoidal"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  from zoo.layers.positional import sinusoidal_encoding

  table = np.asarray(sinusoidal_encoding(*sin["table_shape"]))
  im = axes[0].imshow(table, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
  axes[0].set(xlabel="dimension", ylabel="position", title="sinusoidal table")
  fig.colorbar(im, ax=axes[0])
  dot = np.asarray(sin["dot_with_0"])
  axes[1].plot(offsets, dot / dot[0], label=f"sinusoidal (d={sin['dim']}, PE0·PE0={dot[0]:g})")
  learned = numbers["learned"]
  if learned["given"]:
    ldot = np.asarray(learned["dot_with_0"])
    axes[1].plot(offsets[: len(ldot)], ldot / ldot[0], label=f"learned ({learned['param']})")
  else:
    axes[1].set_title("no learned table given", fontsize=8, loc="right")
  axes[1].set(xlabel="k", ylabel="P[0]·P[k] / P[0]·P[0]", title="similarity to position 0")
  axes[1].legend(fontsize=8)
  rope = numbers["rope"]
  for m, row in zip(rope["starts"], np.asarray(rope["scores"])):
    axes[2].plot(offsets, row, lw=3 if m == rope["starts"][0] else 1, label=f"m = {m}")
  axes[2].set(xlabel="offset n - m", ylabel="rope(q, m) · rope(k, n)",
              title="RoPE: the score depends on n - m only")
  axes[2].legend(fontsize=8)
  fig.tight_layout()
  return fig


def add_arguments(parser) -> None:
  parser.add_argument("--checkpoint", default=None,
                      help="GPT-2 / BERT folder or zoo checkpoint with a learned position table")
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--dim", type=int, default=128)


def main(args) -> dict:
  numbers = run(length=args.length, dim=args.dim, checkpoint=args.checkpoint)
  common.write(args.out, "positions", plot(numbers), numbers)
  return numbers
