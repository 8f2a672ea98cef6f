"""A zoo Llama trained by an NNX loop: ``python examples/nnx_train.py [--steps N] [--tiny]``.

The linen model and its params become an ``nnx.Module`` (``zoo.nnx.from_linen``); the loop is
plain NNX (``nnx.Optimizer``, ``nnx.value_and_grad``, ``nnx.jit``) on bytes of a Python standard
library source file; the trained weights go back to a linen params tree at the end.
"""

from __future__ import annotations

import argparse
import os
import sys


def batches(data, *, batch_size: int, length: int, seed: int = 0):
  """Endless random windows of ``data`` (uint8): ``input_ids`` and next-byte ``targets``."""
  import numpy as np

  rng = np.random.default_rng(seed)
  while True:
    starts = rng.integers(0, len(data) - length - 1, size=batch_size)
    rows = np.stack([data[s : s + length + 1] for s in starts]).astype(np.int32)
    yield {"input_ids": rows[:, :-1], "targets": rows[:, 1:]}


def main(argv=None) -> list[float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--tiny", action="store_true", help="a 2-layer d_model 32 model (tests)")
  args = parser.parse_args(argv)

  import jax
  import numpy as np
  import optax
  from flax import nnx

  import zoo
  import zoo.nnx

  size = dict(d_model=32, num_layers=2, mlp_dim=64) if args.tiny else dict(
      d_model=128, num_layers=4, mlp_dim=384)
  # The Llama 3 layout (RoPE, RMSNorm, SwiGLU, GQA, untied head), shrunk, on bytes.
  model = zoo.build("llama3-8b", vocab_size=256, max_len=128, num_heads=4, num_kv_heads=2,
                    **size)
  params = model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 8), "int32"))["params"]
  module = zoo.nnx.from_linen(model, params)  # an nnx.Module; params keep their logical axes
  optimizer = nnx.Optimizer(module, optax.adamw(3e-3, weight_decay=0.01), wrt=nnx.Param)

  @nnx.jit
  def train_step(module, optimizer, batch):
    def loss_fn(module):
      logits = module(batch["input_ids"], deterministic=True)  # [B, L, V] float32
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(module)
    optimizer.update(module, grads)
    return loss

  with open(os.__file__, "rb") as f:  # any text works: the os module's source
    data = np.frombuffer(f.read(), np.uint8)
  stream = batches(data, batch_size=8, length=32 if args.tiny else 128)
  losses = []
  for step in range(args.steps):
    losses.append(float(train_step(module, optimizer, next(stream))))
    if step % max(args.steps // 10, 1) == 0 or step == args.steps - 1:
      print(f"step {step:4d}  loss {losses[-1]:.3f}")
  trained = zoo.nnx.to_linen_params(module)  # back to linen: model.apply, zoo.save_pretrained
  print("parameters:", sum(x.size for x in jax.tree.leaves(trained)))
  return losses


if __name__ == "__main__":
  main(sys.argv[1:])
