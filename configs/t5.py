"""T5 span-corruption pretraining (task ``span_corruption``), Raffel et al. 2020.

``--config configs/t5.py:<arg>``: a T5 preset (``t5-small`` ... ``mt5-small``: the paper's
objective — noise density 0.15, mean span 3, inputs of 512 tokens and targets of 114 —, batch
128, AdamW with an inverse-square-root schedule; the paper used Adafactor, which zoo's
optimizer section does not offer), ``smoke``, or ``recipe`` (the README's CPU recipe: the
t5-small shape at inputs of 128 tokens; its random weights come from a local config, as no T5
weights ship offline). Fine-tune the result with ``configs/summarization.py``
(``--config.init.path=<this run's workdir>``).

Data: offline, the Python standard library's own files (the ``lm`` corpus) with a trained
8,000-piece SentencePiece vocabulary that holds the sentinels ``<extra_id_0..99>``;
``--config.data.source=tfds`` reads ``c4/en``. A released T5 tokenizer:
``--config.data.tokenizer=<folder>/tokenizer.json``.
"""

from zoo.training.config import base_config, choose, config_args

ARGS = config_args("t5", "smoke", "recipe")  # the `:arg` choices; the first is the default


def get_config(arg=None):
  arg = choose(arg, ARGS)
  preset = arg if arg.startswith(("t5-", "mt5-", "flan-")) else "t5-small"
  c = base_config("span_corruption", preset)
  c.optim.update(name="adamw", lr=1e-3, schedule="inverse_sqrt", warmup_steps=10_000,
                 weight_decay=0.0, clip_norm=1.0)
  c.train.update(batch_size=128, num_steps=524_288)
  c.data.update(src_len=512)
  c.eval.update(every=5000, num_batches=20)

  if arg == "smoke":
    c.model.update(d_model=32, num_heads=4, head_dim=8, num_encoder_layers=1,
                   num_decoder_layers=1, mlp_dim=64, dropout_rate=0.0,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16)
    c.data.update(tokenizer="bpe", vocab_size=600, tokenizer_train_examples=300, src_len=48,
                  num_sentinels=20)
    c.train.update(batch_size=8, num_steps=30, log_every=10, checkpoint_every=10)
    c.optim.update(lr=1e-2, schedule="cosine", warmup_steps=5)
    c.eval.update(every=0, num_batches=2)
  elif arg == "recipe":
    c.data.update(src_len=128)  # 141 tokens per chunk -> 128 inputs and 29 targets
    c.train.update(batch_size=16, num_steps=300, log_every=25, checkpoint_every=100)
    c.optim.update(lr=2e-3, schedule="cosine", warmup_steps=30, end_lr_ratio=0.1)
    c.eval.update(every=0, num_batches=10)
  return c
