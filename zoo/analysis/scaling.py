"""Why attention divides its logits by ``sqrt(d)``.

For ``q, k`` with independent unit-variance entries, ``q . k`` is a sum of ``d`` unit-variance
terms, so its variance is ``d``. Softmax over ``64`` such logits then saturates as ``d`` grows
(entropy -> 0, one key takes all the weight and the gradients through the others vanish);
dividing by ``sqrt(d)`` keeps the logits at unit variance and the entropy where it was at
small ``d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.analysis import common

DIMS = tuple(2**i for i in range(2, 11))  # 4, 8, ..., 1024


def _entropy(logits: np.ndarray) -> np.ndarray:
  """Softmax entropy (nats) over the last axis, computed stably in float64."""
  z = logits.astype(np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  p = np.exp(z)
  p /= p.sum(axis=-1, keepdims=True)
  return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)


def run(
    dims: Sequence[int] = DIMS,
    *,
    samples: int = 8192,
    queries: int = 256,
    keys: int = 64,
    seed: int = 0,
) -> dict:
  """The numbers behind the plot.

  Args:
    dims: head dimensions ``d``.
    samples: ``(q, k)`` pairs per ``d`` for the variance of ``q . k``.
    queries: queries per ``d`` for the mean entropy, each over ``keys`` keys.
    keys: keys per softmax.
    seed: numpy seed.

  Returns:
    ``{"keys": keys, "max_entropy": log(keys), "per_d": [{"d", "variance",
    "entropy_scaled", "entropy_unscaled"}, ...]}``.
  """
  if samples < 2 or queries < 1 or keys < 2:
    raise common.AnalysisError(
        f"need samples >= 2, queries >= 1, keys >= 2; got {samples}, {queries}, {keys}."
    )
  if any(d < 1 for d in dims):
    raise common.AnalysisError(f"dimensions must be >= 1; got {list(dims)}.")
  rng = np.random.default_rng(seed)
  rows = []
  for d in dims:
    chunk = max(1, 2**20 // d)  # ~4 MB per array
    dots = []
    for start in range(0, samples, chunk):
      n = min(chunk, samples - start)
      q = rng.standard_normal((n, d), dtype=np.float32)
      k = rng.standard_normal((n, d), dtype=np.float32)
      dots.append(np.einsum("nd,nd->n", q, k, dtype=np.float64))
    variance = float(np.var(np.concatenate(dots)))
    q = rng.standard_normal((queries, d), dtype=np.float32)
    k = rng.standard_normal((queries, keys, d), dtype=np.float32)
    logits = np.einsum("qd,qkd->qk", q, k)
    rows.append(dict(
        d=int(d),
        variance=variance,
        entropy_scaled=float(_entropy(logits / np.sqrt(d)).mean()),
        entropy_unscaled=float(_entropy(logits).mean()),
    ))
  return dict(keys=keys, max_entropy=float(np.log(keys)), samples=samples, per_d=rows)


def plot(numbers: dict):
  """Two panels: variance of ``q . k`` against ``d`` (with ``y = d``), and softmax entropy."""
  plt = common.pyplot()
  rows = numbers["per_d"]
  d = np.array([r["d"] for r in rows])
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  ax1.loglog(d, [r["variance"] for r in rows], "o", label="empirical Var(q·k)")
  ax1.loglog(d, d, "-", color="gray", label="y = d")
  ax1.set(xlabel="d", ylabel="variance", title="Var(q·k) grows like d")
  ax1.legend()
  ax2.semilogx(d, [r["entropy_scaled"] for r in rows], "o-", label="q·k / sqrt(d)")
  ax2.semilogx(d, [r["entropy_unscaled"] for r in rows], "s-", label="q·k (unscaled)")
  ax2.axhline(numbers["max_entropy"], color="gray", ls=":", label=f"log {numbers['keys']}")
  ax2.set(xlabel="d", ylabel="mean softmax entropy (nats)",
          title=f"softmax over {numbers['keys']} keys")
  ax2.legend()
  for ax in (ax1, ax2):
    ax.set_xticks(d, [str(x) for x in d], minor=False)
  fig.tight_layout()
  return fig


def add_arguments(parser) -> None:
  parser.add_argument("--samples", type=int, default=8192, help="(q, k) pairs per d")
  parser.add_argument("--queries", type=int, default=256, help="queries per d for entropy")
  parser.add_argument("--seed", type=int, default=0)


def main(args) -> dict:
  numbers = run(samples=args.samples, queries=args.queries, seed=args.seed)
  common.write(args.out, "scaling", plot(numbers), numbers)
  return numbers
