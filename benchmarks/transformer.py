"""Transformer-base (Vaswani et al. 2017) at source 256 / target 256 next to Hugging Face Marian.

``python -m benchmarks.transformer [--batch-size B] [--smoke] [--out transformer.json]``.
``MarianMTModel`` is configured to the base model's dimensions: 6 + 6 post-LN layers, d=512,
8 heads, ReLU feed-forward of 2048, one 37,000-token table shared by source, target and
output, embeddings scaled by sqrt(d), sinusoidal positions, dropout 0.1 on residuals (none on
attention weights or the feed-forward hidden layer). Throughput counts source + target tokens.
"""

from __future__ import annotations

from benchmarks import common

SMOKE = dict(vocab_size=300, d_model=64, num_heads=4, num_encoder_layers=1,
             num_decoder_layers=1, mlp_dim=128, max_len=32)


def case(args, src_len: int = 256, tgt_len: int = 256) -> common.Case:
  import zoo

  preset = "transformer-base"
  overrides = dict(SMOKE) if args.smoke else {}
  cfg = zoo.get_config(preset, **overrides, **common.zoo_overrides(args))
  if args.smoke:
    src_len = tgt_len = 16
  b = args.batch_size or (2 if args.smoke else 64 if common.on_gpu() else 2)
  r = common.rng()
  # No padding (pad_id 0 never drawn): every position counts on both sides.
  src = r.randint(1, cfg.vocab_size, (b, src_len)).astype("int32")
  tgt = r.randint(1, cfg.vocab_size, (b, tgt_len + 1)).astype("int32")
  tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]

  model = zoo.build(cfg)
  params = common.param_tree(model, (src[:1], tgt_in[:1]), {})
  enc = sum(common.count(v) for k, v in params.items() if k.startswith("encoder"))
  dec = sum(common.count(v) for k, v in params.items() if k.startswith("decoder"))
  out = common.count(params) - enc - dec  # the shared table: a matmul on target tokens only
  d = cfg.d_model
  flops = common.train_flops(
      [(enc, b * src_len), (dec, b * tgt_len), (out, b * tgt_len)],
      [
          (cfg.num_encoder_layers, d, b * src_len, src_len, False),
          (cfg.num_decoder_layers, d, b * tgt_len, tgt_len, True),
          (cfg.num_decoder_layers, d, b * tgt_len, src_len, False),  # cross-attention
      ],
  )

  def zoo_work():
    batch = {"src_ids": src, "tgt_in_ids": tgt_in, "tgt_out_ids": tgt_out,
             "weights": (tgt_out * 0 + 1).astype("float32")}
    return common.ZooWork(model, "translation", batch)

  def hf_work():
    import transformers

    hf_cfg = transformers.MarianConfig(
        vocab_size=cfg.vocab_size, d_model=d, encoder_layers=cfg.num_encoder_layers,
        decoder_layers=cfg.num_decoder_layers, encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads, encoder_ffn_dim=cfg.mlp_dim,
        decoder_ffn_dim=cfg.mlp_dim, activation_function="relu", dropout=cfg.dropout_rate,
        attention_dropout=cfg.attention_dropout_rate, activation_dropout=cfg.mlp_dropout_rate,
        max_position_embeddings=cfg.max_len, scale_embedding=cfg.scale_embeddings,
        pad_token_id=cfg.pad_id, decoder_start_token_id=cfg.pad_id, eos_token_id=1,
        forced_eos_token_id=None, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, use_cache=False,
    )
    inputs = {"input_ids": src, "attention_mask": src * 0 + 1, "decoder_input_ids": tgt_in}
    return common.TorchWork(
        transformers.MarianMTModel(hf_cfg), {**inputs, "labels": tgt_out}, inputs
    )

  return common.Case(
      model=preset + (" (smoke)" if args.smoke else ""),
      shape=f"B={b} S={src_len} T={tgt_len}",
      unit="tokens",
      units=b * (src_len + tgt_len),
      flops=flops,
      zoo=zoo_work,
      peers={"hf": hf_work},
  )


def main(argv: list[str] | None = None) -> dict:
  args = common.parse(common.parser(__doc__.splitlines()[0]), argv)
  return common.run("Transformer-base (transformer-base)", [case(args)], args)


if __name__ == "__main__":
  main()
