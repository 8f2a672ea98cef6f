"""Peak host memory of loading a Hugging Face Llama checkpoint straight onto a mesh.

  python -m benchmarks.sharded_load --preset tinyllama-1.1b --devices 8 [--dir /tmp/ckpt]

Writes a random checkpoint of the preset's shapes (bfloat16 safetensors, sharded with
``model.safetensors.index.json``, numbers written chunk by chunk with no framework and no
whole tensor in memory), then, in fresh subprocesses on ``--devices`` simulated CPU devices
with an FSDP mesh ``(data=1, fsdp=devices, tensor=1)``:

* ``mesh``: ``zoo.from_pretrained(path, mesh=mesh, dtype=bfloat16)``, which reads each
  device's block on its own (``zoo.pretrained.assemble.place_lazy``);
* ``host``: the same parameters read whole into host memory first (``api.read`` without
  ``lazy``), the path a load without per-device reads would take.

For each it prints the peak of Python-side allocations during the load (``tracemalloc``: the
numpy staging buffers), the growth of the process's peak RSS, and the peak growth of its
anonymous memory (``RssAnon``, sampled every millisecond), each also beyond the parameters
themselves: on CPU the "devices" are host memory, so the loaded shards are resident too, and
RSS also counts the pages of the memory-mapped safetensors files (page cache, not allocations).
Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np

GIB = 2**30


def _hf_names(cfg) -> dict[str, tuple[int, ...]]:
  """Llama tensor names and shapes of a GPTConfig (the llama converter's key map)."""
  d, f, v = cfg.d_model, cfg.mlp_dim, cfg.vocab_size
  h = cfg.head_dim or d // cfg.num_heads
  n, k = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
  out = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
  for i in range(cfg.num_layers):
    p = f"model.layers.{i}."
    out.update({
        f"{p}input_layernorm.weight": (d,), f"{p}post_attention_layernorm.weight": (d,),
        f"{p}self_attn.q_proj.weight": (n * h, d), f"{p}self_attn.k_proj.weight": (k * h, d),
        f"{p}self_attn.v_proj.weight": (k * h, d), f"{p}self_attn.o_proj.weight": (d, n * h),
        f"{p}mlp.gate_proj.weight": (f, d), f"{p}mlp.up_proj.weight": (f, d),
        f"{p}mlp.down_proj.weight": (d, f),
    })
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = (v, d)
  return out


def write_checkpoint(preset: str, folder: str, shard_bytes: int = 1 << 30) -> int:
  """A random bf16 checkpoint of ``preset`` in ``folder``; returns the number of parameters."""
  import ml_dtypes

  import zoo
  from zoo.pretrained import llama

  cfg = zoo.get_config(preset)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({**llama.config_to_hf(cfg), "torch_dtype": "bfloat16"}, f, indent=2)
  names = _hf_names(cfg)
  shards, current, size = [], [], 0
  for name, shape in names.items():  # greedy packing into shards of about shard_bytes
    nbytes = 2 * int(np.prod(shape))
    if current and size + nbytes > shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(name)
    size += nbytes
  shards.append(current)
  rng = np.random.default_rng(0)
  weight_map = {}
  for s, members in enumerate(shards):
    file = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in members:
      nbytes = 2 * int(np.prod(names[name]))
      header[name] = {"dtype": "BF16", "shape": list(names[name]),
                      "data_offsets": [offset, offset + nbytes]}
      offset += nbytes
      weight_map[name] = file
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(folder, file), "wb") as f:
      f.write(struct.pack("<Q", len(head)))
      f.write(head)
      for name in members:
        shape = names[name]
        rows = max(1, (1 << 22) // int(np.prod(shape[1:], dtype=np.int64)))  # ~4M values a chunk
        for r in range(0, shape[0], rows):
          chunk = rng.standard_normal((min(rows, shape[0] - r), *shape[1:]), np.float32) * 0.02
          f.write(chunk.astype(ml_dtypes.bfloat16).tobytes())
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return sum(int(np.prod(s)) for s in names.values())


def _status(field: str) -> int:
  """A memory field of ``/proc/self/status`` in bytes (Linux)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  return 0


def _anon_bytes() -> int:
  """Anonymous resident memory of this process (``RssAnon``): what the load allocates, without
  the file pages of the memory-mapped safetensors (``RssFile``, page cache the kernel can drop)."""
  return _status("RssAnon")


class _AnonPeak:
  """The peak of :func:`_anon_bytes`, sampled every millisecond on a thread."""

  def __init__(self):
    import threading

    self.peak, self._stop = _anon_bytes(), threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while not self._stop.wait(0.001):
      self.peak = max(self.peak, _anon_bytes())

  def stop(self) -> int:
    self._stop.set()
    self._thread.join()
    return max(self.peak, _anon_bytes())


def _measure(folder: str, devices: int, mode: str) -> dict:
  """In this (fresh) process: load ``folder`` onto the mesh, return the memory figures."""
  import resource
  import tracemalloc

  import jax
  import jax.numpy as jnp

  from zoo.pretrained import api, assemble

  mesh = jax.make_mesh((1, devices, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rss0 = _status("VmRSS")
  peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  anon0 = _anon_bytes()
  sampler = _AnonPeak()
  tracemalloc.start()
  start = time.perf_counter()
  if mode == "mesh":
    _, params = api.from_pretrained(folder, mesh=mesh, dtype=jnp.bfloat16)
  else:
    fitted = api.load(folder, dtype=jnp.bfloat16)  # every tensor read whole into host memory
    params = assemble.place(
        jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16),
                     __import__("flax").traverse_util.unflatten_dict(fitted.flat, sep="/")),
        fitted.model, mesh)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  _, traced_peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  anon_peak = sampler.stop()
  leaves = jax.tree.leaves(params)
  param_bytes = sum(x.nbytes for x in leaves)
  largest = max(x.nbytes for x in leaves)
  shard = max(s.data.nbytes for x in leaves for s in x.addressable_shards)
  peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, peak0)
  return {
      "mode": mode, "seconds": round(seconds, 1), "params_gib": param_bytes / GIB,
      "largest_tensor_gib": largest / GIB, "largest_device_block_gib": shard / GIB,
      "tracemalloc_peak_gib": traced_peak / GIB,
      "rss_peak_growth_gib": (peak - rss0) / GIB,
      "rss_peak_beyond_params_gib": (peak - rss0 - param_bytes) / GIB,
      "anon_peak_growth_gib": (anon_peak - anon0) / GIB,
      "anon_peak_beyond_params_gib": (anon_peak - anon0 - param_bytes) / GIB,
      "specs": sorted({str(x.sharding.spec) for x in leaves}),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="tinyllama-1.1b")
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--dir", default="/tmp/zoo-sharded-load")
  p.add_argument("--modes", default="mesh,host")
  p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one fresh-process run
  args = p.parse_args(argv)
  if args.measure:
    print(json.dumps(_measure(args.dir, args.devices, args.measure)))
    return 0
  if not os.path.exists(os.path.join(args.dir, "model.safetensors.index.json")):
    start = time.perf_counter()
    n = write_checkpoint(args.preset, args.dir)
    print(f"wrote {args.preset}: {n / 1e9:.2f}B parameters, bf16, in "
          f"{time.perf_counter() - start:.0f}s to {args.dir}")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
  for mode in args.modes.split(","):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.sharded_load", "--dir", args.dir, "--devices",
         str(args.devices), "--measure", mode], env=env, capture_output=True, text=True,
        check=True,
    ).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    print(f"{mode:>5}: params {r['params_gib']:.2f} GiB (largest tensor "
          f"{r['largest_tensor_gib']:.3f}, largest device block "
          f"{r['largest_device_block_gib']:.3f})"
          f" | tracemalloc peak {r['tracemalloc_peak_gib']:.3f} GiB | peak RSS growth "
          f"{r['rss_peak_growth_gib']:.2f} GiB, beyond the params "
          f"{r['rss_peak_beyond_params_gib']:.2f} GiB | anonymous (RssAnon) peak growth "
          f"{r['anon_peak_growth_gib']:.2f} GiB, beyond the params "
          f"{r['anon_peak_beyond_params_gib']:.3f} GiB | {r['seconds']}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
