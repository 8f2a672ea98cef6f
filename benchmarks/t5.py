"""T5-small (Raffel et al. 2020, the released ``t5-small`` shape) at source 512 / target 128
next to Hugging Face ``T5ForConditionalGeneration``.

``python -m benchmarks.t5 [--batch-size B] [--smoke] [--out t5.json]``. Both sides are built
from one config (``zoo.get_config("t5-small")``, written out for transformers by
``zoo.pretrained.t5.config_to_hf``): 6 + 6 pre-norm layers, d=512, 8 heads of 64, ReLU
feed-forward of 2048, relative-position buckets, the 32,128-token table shared by source,
target and (scaled) output, dropout 0.1. The lengths are T5's span-corruption pretraining
shape (inputs 512, targets 114, here 128). Throughput counts source + target tokens.
"""

from __future__ import annotations

from benchmarks import cases, cli, env, runner

SMOKE = dict(vocab_size=300, d_model=64, num_heads=4, head_dim=16, num_encoder_layers=1,
             num_decoder_layers=1, mlp_dim=128)


def case(args, src_len: int = 512, tgt_len: int = 128) -> cases.Case:
  import zoo

  preset = "t5-small"
  overrides = dict(SMOKE) if args.smoke else {}
  cfg = zoo.get_config(preset, **overrides, **cases.zoo_overrides(args))
  if args.smoke:
    src_len = tgt_len = 16
  b = args.batch_size or (2 if args.smoke else 64 if env.on_gpu() else 4)
  r = cases.rng()
  # No padding (pad_id 0 never drawn): every position counts on both sides.
  src = r.randint(1, cfg.vocab_size, (b, src_len)).astype("int32")
  tgt = r.randint(1, cfg.vocab_size, (b, tgt_len + 1)).astype("int32")
  tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
  batch = {"src_ids": src, "tgt_in_ids": tgt_in, "tgt_out_ids": tgt_out,
           "weights": (tgt_out * 0 + 1).astype("float32")}

  def zoo_work():
    return cases.ZooWork(cfg, "translation", batch)

  def hf_work():
    import transformers

    from zoo.pretrained import t5

    hf_cfg = transformers.T5Config(**{**t5.config_to_hf(cfg), "use_cache": False})
    inputs = {"input_ids": src, "attention_mask": src * 0 + 1, "decoder_input_ids": tgt_in}
    return cases.TorchWork(
        transformers.T5ForConditionalGeneration(hf_cfg), {**inputs, "labels": tgt_out}, inputs
    )

  return cases.Case(
      model=preset + (" (smoke)" if args.smoke else ""),
      shape=f"B={b} S={src_len} T={tgt_len}",
      unit="tokens",
      units=b * (src_len + tgt_len),
      flops=cases.zoo_flops(cfg, batch),
      zoo=zoo_work,
      peers={"hf": hf_work},
  )


def main(argv: list[str] | None = None) -> dict:
  args = cli.parse(cli.parser(__doc__.splitlines()[0]), argv)
  return runner.run("T5-small (t5-small)", [case(args)], args)


if __name__ == "__main__":
  main()
