"""Transformer-base (Vaswani et al. 2017) at source 256 / target 256 next to Hugging Face Marian.

``python -m benchmarks.transformer [--batch-size B] [--smoke] [--out transformer.json]``.
``MarianMTModel`` is configured to the base model's dimensions: 6 + 6 post-LN layers, d=512,
8 heads, ReLU feed-forward of 2048, one 37,000-token table shared by source, target and
output, embeddings scaled by sqrt(d), sinusoidal positions, dropout 0.1 on residuals (none on
attention weights or the feed-forward hidden layer). Throughput counts source + target tokens.
"""

from __future__ import annotations

import dataclasses

from benchmarks import cases, cli, env, runner

SMOKE = dict(vocab_size=300, d_model=64, num_heads=4, num_encoder_layers=1,
             num_decoder_layers=1, mlp_dim=128, max_len=32)


def case(args, src_len: int = 256, tgt_len: int = 256) -> cases.Case:
  import zoo

  preset = "transformer-base"
  overrides = dict(SMOKE) if args.smoke else {}
  cfg = zoo.get_config(preset, **overrides, **cases.zoo_overrides(args))
  if args.smoke:
    src_len = tgt_len = 16
  b = args.batch_size or (2 if args.smoke else 64 if env.on_gpu() else 2)
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

    from zoo.pretrained import marian

    # The paper's sinusoids interleave sin and cos, Marian's are split in halves: a
    # permutation of one fixed table, which changes no cost, so Marian stands in.
    hf = marian.config_to_hf(dataclasses.replace(cfg, sinusoid_layout="split"))
    # No <eos> handling in a training step: an id that is not pad, and no forced end.
    hf_cfg = transformers.MarianConfig(**hf, eos_token_id=1, forced_eos_token_id=None,
                                       use_cache=False)
    inputs = {"input_ids": src, "attention_mask": src * 0 + 1, "decoder_input_ids": tgt_in}
    return cases.TorchWork(
        transformers.MarianMTModel(hf_cfg), {**inputs, "labels": tgt_out}, inputs
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
  return runner.run("Transformer-base (transformer-base)", [case(args)], args)


if __name__ == "__main__":
  main()
