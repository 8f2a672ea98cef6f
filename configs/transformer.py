"""Encoder-decoder translation (task ``translation``), Vaswani et al. 2017.

``--config configs/transformer.py:<arg>``: ``transformer-base`` / ``transformer-big`` (the
paper's recipe: Adam b2 0.98, eps 1e-9, the inverse-square-root schedule with 4000 warm-up
steps and peak ``d_model**-0.5 * 4000**-0.5``, label smoothing 0.1) or ``smoke``.

Data: offline, numbers written out in English -> French (num2words); ``--config.data.source=tfds``
reads ``wmt14_translate/de-en``.

``bart-base``, ``bart-large``, ``mbart-large-cc25``: BART's denoising pretraining (task
``denoising``: text infilling + sentence permutation, Lewis et al. 2020) of that architecture:
AdamW 4e-4 with 10k warm-up steps and linear decay, dropout 0.1, 512-token documents
(offline: the standard library's docstring prose; ``--config.data.source=tfds`` reads
``c4/en``), a byte-level BPE vocabulary trained with ``<mask>``.
"""

from zoo.training.config import base_config, choose, config_args

ARGS = config_args("transformer", "smoke")  # the `:arg` choices; the first is the default


def get_config(arg=None):
  arg = choose(arg, ARGS)
  if arg.startswith(("bart-", "mbart-")):
    return _denoising(arg)
  preset = "transformer-base" if arg == "smoke" else arg
  c = base_config("translation", preset)
  d_model = {"transformer-base": 512, "transformer-big": 1024}[preset]
  warmup = 4000
  c.label_smoothing = 0.1
  c.optim.update(
      name="adam", lr=d_model**-0.5 * warmup**-0.5, schedule="inverse_sqrt",
      warmup_steps=warmup, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, clip_norm=0.0,
  )
  c.train.update(batch_size=256, num_steps=100_000)
  c.data.update(src_len=64, tgt_len=64)
  c.model.max_len = 64

  if arg == "smoke":
    c.model.update(
        d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, mlp_dim=64,
        max_len=48, dropout_rate=0.0,
    )
    c.data.update(tokenizer="byte", src_len=48, tgt_len=48)
    c.train.update(batch_size=8, num_steps=30, log_every=10, checkpoint_every=10)
    c.optim.update(lr=1e-2, warmup_steps=5, clip_norm=1.0)
    c.eval.update(every=0, num_batches=2, decode_batches=1)
  return c


def _denoising(preset):
  c = base_config("denoising", preset)
  c.optim.update(name="adamw", lr=4e-4, schedule="linear", warmup_steps=10_000,
                 end_lr_ratio=0.0, weight_decay=0.01, clip_norm=1.0)
  c.train.update(batch_size=256, num_steps=500_000)
  c.data.update(src_len=512, tokenizer="bpe", vocab_size=50265)
  c.model.max_len = 514  # 512 positions after BART's offset of 2
  return c
