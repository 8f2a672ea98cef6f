"""Shared plumbing: the error type the CLI turns into one line, and the PNG + JSON writers."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


class AnalysisError(ValueError):
  """An expected error (bad flag value, unusable checkpoint): the CLI prints it in one line."""


def pyplot():
  """matplotlib's pyplot on the Agg backend (no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _plain(x: Any) -> Any:
  """numpy scalars / arrays -> JSON-able Python values."""
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, np.ndarray):
    return _plain(x.tolist())
  if isinstance(x, np.generic):
    return x.item()
  return x


def write(out_dir: str, name: str, fig, numbers: dict[str, Any]) -> tuple[str, str]:
  """Save ``fig`` as ``out_dir/name.png`` and ``numbers`` as ``out_dir/name.json``; close fig."""
  os.makedirs(out_dir, exist_ok=True)
  png, js = os.path.join(out_dir, f"{name}.png"), os.path.join(out_dir, f"{name}.json")
  fig.savefig(png, dpi=80, bbox_inches="tight")
  pyplot().close(fig)
  with open(js, "w") as f:
    json.dump(_plain(numbers), f, indent=1)
  return png, js
