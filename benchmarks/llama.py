"""A Llama-shaped 12-layer decoder with the 128,256-token vocabulary at T=1024 next to Hugging
Face ``LlamaForCausalLM``.

``python -m benchmarks.llama [--batch-size B] [--length T] [--smoke] [--out llama.json]``. Both
sides: the Llama 3 layout (``zoo/presets.py``: RoPE with base 500,000, RMSNorm, SwiGLU, no
biases, an untied output head) at GPT-2-small depth and width: 12 layers, d=768, 12 query heads
of 64 sharing 4 key/value heads, SwiGLU hidden 2048, no dropout; next-token cross entropy over
the whole row. The vocabulary is Llama 3's, so the [T, 128256] logits and the two 98.5M
embedding tables weigh as much as the 12 layers (~272M parameters in all): this is the row
where the output layer dominates memory and time.
"""

from __future__ import annotations

from benchmarks import cases, cli, env, runner

# The Llama-3 layout at GPT-2-small size; the vocabulary and RoPE base are Llama 3's.
SHAPE = dict(vocab_size=128256, d_model=768, num_layers=12, num_heads=12, num_kv_heads=4,
             mlp_dim=2048, max_len=1024)
SMOKE = dict(vocab_size=257, d_model=64, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=128,
             max_len=32)


def case(args) -> cases.Case:
  import zoo

  preset = "llama3-8b"  # the layout; SHAPE / SMOKE set the size
  overrides = dict(SMOKE) if args.smoke else dict(SHAPE)
  if getattr(args, "length", None):
    overrides["max_len"] = args.length
  cfg = zoo.get_config(preset, **overrides, **cases.zoo_overrides(args))
  b = args.batch_size or (2 if args.smoke else 8 if env.on_gpu() else 1)
  t = cfg.max_len
  ids = cases.rng().randint(0, cfg.vocab_size, (b, t + 1)).astype("int32")
  inputs, targets = ids[:, :-1], ids[:, 1:]
  batch = {"input_ids": inputs, "targets": targets, "weights": (targets * 0 + 1).astype("float32")}

  def zoo_work():
    return cases.ZooWork(cfg, "lm", batch)

  def hf_work():
    import transformers

    from zoo.pretrained import llama

    hf = {k: v for k, v in llama.config_to_hf(cfg).items() if k not in ("architectures",
                                                                          "model_type")}
    model_hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf, use_cache=False))
    # Hugging Face shifts labels inside the model: labels = the inputs themselves.
    return cases.TorchWork(
        model_hf, {"input_ids": inputs, "labels": inputs}, {"input_ids": inputs}
    )

  return cases.Case(
      model="llama-12L-768 (128K vocab)" + (" (smoke)" if args.smoke else ""),
      shape=f"B={b} T={t}",
      unit="tokens",
      units=b * t,
      flops=cases.zoo_flops(cfg, batch),
      zoo=zoo_work,
      peers={"hf": hf_work},
  )


def main(argv: list[str] | None = None) -> dict:
  p = cli.parser(__doc__.splitlines()[0])
  p.add_argument("--length", type=int, default=None,
                 help="sequence length T (default 1024; smoke 32)")
  args = cli.parse(p, argv)
  return runner.run("Llama-shaped decoder (12 layers, d=768, 128K vocabulary)", [case(args)], args)


if __name__ == "__main__":
  main()
