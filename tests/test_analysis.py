"""zoo.analysis: each experiment's numbers, and the CLI's files and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from zoo.analysis import AnalysisError, scaling
from zoo.analysis.__main__ import main


def _cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "zoo.analysis", *args], capture_output=True, text=True, timeout=120
  )


def test_scaling_variance_is_d_and_scaling_keeps_entropy():
  numbers = scaling.run(samples=4096, queries=128)
  rows = numbers["per_d"]
  assert [r["d"] for r in rows] == list(scaling.DIMS)
  for r in rows:
    assert abs(r["variance"] - r["d"]) < 0.1 * r["d"], r
  unscaled = [r["entropy_unscaled"] for r in rows]
  assert all(a > b for a, b in zip(unscaled, unscaled[1:]))
  assert unscaled[-1] < 0.25
  scaled0 = rows[0]["entropy_scaled"]
  for r in rows:
    assert abs(r["entropy_scaled"] - scaled0) < 0.1 * scaled0
  assert max(r["entropy_scaled"] for r in rows) <= numbers["max_entropy"]


def test_scaling_cli_writes_png_and_json(tmp_path):
  assert main(["scaling", "--out", str(tmp_path), "--samples", "256", "--queries", "8"]) == 0
  data = json.loads((tmp_path / "scaling.json").read_text())
  assert {"d", "variance", "entropy_scaled", "entropy_unscaled"} <= set(data["per_d"][0])
  assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_one_line_exit_2(tmp_path):
  r = _cli("scaling", "--out", str(tmp_path), "--samples", "1")
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("python -m zoo.analysis scaling: error:"), r.stderr
  with pytest.raises(AnalysisError):
    scaling.run(samples=1)
  assert np.isfinite(scaling._entropy(np.array([[1e4, 0.0]]))).all()
