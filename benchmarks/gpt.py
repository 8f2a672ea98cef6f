"""GPT-2 124M (``gpt2-small``) at T=1024 next to Hugging Face ``GPT2LMHeadModel``.

``python -m benchmarks.gpt [--batch-size B] [--length T] [--smoke] [--out gpt.json]``. Both
sides: 12 layers, d=768, 12 heads, GELU (tanh), tied output projection, no dropout (the zoo
preset's, set on the Hugging Face config too), next-token cross entropy over the whole row.
``--length`` above 1024 (the long-context rows: 4096, 8192) widens the learned position table
of both models to T; pair it with ``--attention-impl chunked`` (the default from
``attention.CHUNKED_MIN_LENGTH`` on CPU anyway) and ``--peers eager`` for peak memory.
"""

from __future__ import annotations

from benchmarks import cases, cli, env, runner

SMOKE = dict(vocab_size=257, max_len=32, d_model=64, num_heads=4, num_layers=1, mlp_dim=128)


def case(args) -> cases.Case:
  import zoo

  preset = "gpt2-small"
  overrides = dict(SMOKE) if args.smoke else {}
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

    from zoo.pretrained import gpt2

    hf_cfg = transformers.GPT2Config(**gpt2.config_to_hf(cfg), use_cache=False)
    model_hf = transformers.GPT2LMHeadModel(hf_cfg)
    # Hugging Face shifts labels inside the model: labels = the inputs themselves.
    return cases.TorchWork(
        model_hf, {"input_ids": inputs, "labels": inputs}, {"input_ids": inputs}
    )

  return cases.Case(
      model=preset + (" (smoke)" if args.smoke else ""),
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
                 help="sequence length T (default: the preset's 1024; smoke 32)")
  args = cli.parse(p, argv)
  return runner.run("GPT-2 124M (gpt2-small)", [case(args)], args)


if __name__ == "__main__":
  main()
