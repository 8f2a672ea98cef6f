#!/usr/bin/env bash
# The GPU benchmark session in one command (benchmarks/gpu.py says what it measures):
#   benchmarks/gpu.sh [--out-dir gpu-results] [--dry-run] [--only parity,attention,gpt,bert,vit]
# Sized for <= 8 minutes on one H200. Needs jax (CUDA), flax, optax, orbax-checkpoint, chex,
# ml_collections, torch, transformers and timm; not tensorflow-datasets or grain. A machine
# without network can install missing pure-Python packages from wheels in $ZOO_WHEELS.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
missing=$("$PYTHON" - <<'PY'
import importlib.util
need = ["jax", "flax", "optax", "orbax.checkpoint", "chex", "ml_collections", "torch",
        "transformers"]
print(" ".join(n for n in need if importlib.util.find_spec(n.split(".")[0]) is None))
PY
)
if [[ -n "$missing" && -n "${ZOO_WHEELS:-}" ]]; then
  "$PYTHON" -m pip install -q --no-index --find-links "$ZOO_WHEELS" ${missing//./-}
elif [[ -n "$missing" ]]; then
  echo "gpu.sh: missing Python packages: $missing (set ZOO_WHEELS to a folder of wheels)" >&2
  exit 2
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # zoo and PyTorch share the GPU
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m benchmarks.gpu "$@"
