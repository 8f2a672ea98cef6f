"""Test-wide set-up: 8 simulated CPU devices for sharding tests, float32 matmuls, no network
for Hugging Face, one persistent compilation cache for the whole run, and the fixtures several
test files share.

The cache is shared by both xdist workers and by every ``train.py`` the tests launch (they
inherit the environment), so a program that several tests compile (the smoke configs, the
tiny loop configs) is compiled once per run. It is deleted when the run ends.
"""

import itertools
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# transformers builds its reference models locally: it must never try the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Made by the first process (xdist's controller); its workers inherit the variable. A cache
# the caller chose is used and kept.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="zoo-tests-jax-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_sessionfinish(session):
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):  # after the workers are done
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def take():
  """``take(dataset, n)``: the first ``n`` batches of a ``zoo.data`` dataset, as a list."""
  return lambda ds, n: list(itertools.islice(iter(ds), n))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
  """A small folder of real prose: 40 short standard-library docstrings, one a file, and a file
  that is not UTF-8 (the offline reader skips it)."""
  from zoo.data import offline  # noqa: PLC0415

  root = tmp_path_factory.mktemp("corpus")
  docs = [d for _, d in offline.stdlib_docstrings() if 80 < len(d) < 400 and d.isascii()][:40]
  for i, d in enumerate(docs):
    (root / f"doc{i:02d}.txt").write_text(d)
  (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
  return root
