"""BERT-base pretraining (masked LM + next sentence) at T=128 and T=512 next to Hugging Face.

``python -m benchmarks.bert [--lengths 128,512] [--batch-size B] [--smoke] [--out bert.json]``.
Both sides: ``BertForPreTraining`` layout (12 post-LN layers, d=768, tied MLM decoder, pooler
and NSP head), dropout 0.1 on hidden states and attention weights (BERT's), 15% of the
positions carry an MLM label (the rest are ignored), every row is full (no padding). zoo
scores the MLM head at the masked positions only (the batch's ``masked_positions``, as
``zoo.data.bert`` makes it); ``BertForPreTraining`` scores every position.
"""

from __future__ import annotations

import numpy as np

from benchmarks import cases, cli, env, runner

SMOKE = dict(vocab_size=211, max_len=32, d_model=64, num_heads=4, num_layers=1, mlp_dim=128)
LENGTHS = (128, 512)
SMOKE_LENGTHS = (16, 32)


def default_batch(length: int, smoke: bool) -> int:
  if smoke:
    return 2
  if env.on_gpu():
    return 128 if length <= 128 else 32
  return max(512 // length, 1)  # 512 tokens per step: a few seconds on two CPU cores


def case(args, length: int = LENGTHS[0]) -> cases.Case:
  import zoo

  preset = "bert-base"
  overrides = dict(SMOKE) if args.smoke else {}
  cfg = zoo.get_config(preset, head="pretraining", **overrides, **cases.zoo_overrides(args))
  if length > cfg.max_len:
    raise ValueError(f"length {length} is longer than the model's max_len {cfg.max_len}.")
  b = args.batch_size or default_batch(length, args.smoke)
  r = cases.rng(length)
  ids = r.randint(1, cfg.vocab_size, (b, length)).astype("int32")
  types = (np.arange(length)[None] >= length // 2).repeat(b, 0).astype("int32")  # A then B
  # As zoo.data.bert selects (written out here: that module needs Grain, which the GPU image
  # lacks): round(15% of the L - 3 candidates) per row, in P slots (a multiple of 8).
  count = max(1, round(0.15 * (length - 3)))
  slots = max(8, -(-count // 8) * 8)
  positions = np.sort(np.argsort(r.rand(b, length), axis=1)[:, :count], axis=1).astype("int32")
  labels = r.randint(1, cfg.vocab_size, (b, count)).astype("int32")
  mlm_targets = np.full((b, length), -100, np.int32)
  np.put_along_axis(mlm_targets, positions, labels, axis=1)
  pad = ((0, 0), (0, slots - count))
  nsp = r.randint(0, 2, (b,)).astype("int32")
  mask = ids * 0 + 1
  # zoo trains as zoo.data.bert's batches make it: the MLM head only at the masked positions.
  batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
           "mlm_targets": mlm_targets, "nsp_labels": nsp,
           "masked_positions": np.pad(positions, pad),
           "masked_labels": np.pad(labels, pad, constant_values=-100),
           "masked_weights": np.pad(np.ones((b, count), np.float32), pad)}

  def zoo_work():
    return cases.ZooWork(cfg, "mlm_nsp", batch)

  def hf_work():
    import transformers

    from zoo.pretrained import bert

    hf_cfg = transformers.BertConfig(**bert.config_to_hf(cfg))
    inputs = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    train = {**inputs, "labels": mlm_targets, "next_sentence_label": nsp}
    return cases.TorchWork(transformers.BertForPreTraining(hf_cfg), train, inputs)

  return cases.Case(
      model=preset + (" (smoke)" if args.smoke else ""),
      shape=f"B={b} T={length}",
      unit="tokens",
      units=b * length,
      flops=cases.zoo_flops(cfg, batch),
      zoo=zoo_work,
      peers={"hf": hf_work},
  )


def main(argv: list[str] | None = None) -> dict:
  p = cli.parser(__doc__.splitlines()[0])
  p.add_argument("--lengths", default=None, help="comma list of sequence lengths (default 128,512)")
  args = cli.parse(p, argv)
  if args.lengths:
    lengths = cli.parse_ints("--lengths", args.lengths)
  else:
    lengths = SMOKE_LENGTHS if args.smoke else LENGTHS
  return runner.run(
      "BERT-base (bert-base, pretraining heads)", [case(args, n) for n in lengths], args
  )


if __name__ == "__main__":
  main()
