"""Abstractive summarization (task ``summarization``) with an encoder-decoder: T5 or BART.

``--config configs/summarization.py:<arg>``: a T5 preset (``t5-small`` ... : documents of 512
tokens, summaries of 64, AdamW 1e-4 with a linear schedule; start from weights with
``--config.init.path``: a Hugging Face T5 folder — add ``--config.data.source_prefix='summarize:
'`` for released T5 models — or a ``configs/t5.py`` run's workdir), ``smoke``, or ``recipe``
(the README's CPU recipe: fine-tune the ``configs/t5.py:recipe`` pretraining run, given with
``--config.init.path``; without it the same model trains from random weights, the control).

``bart-base``, ``bart-large``, ``mbart-large-cc25``: fine-tune a Hugging Face BART / mBART
folder given with ``--config.init.path`` (its tokenizer.json is the data's tokenizer): the
BART paper's CNN/DailyMail recipe (AdamW 3e-5, 500 warmup steps, label smoothing 0.1, documents
of 1024 tokens, summaries of 128, 4 beams with length penalty 2.0 at evaluation). The decoder
starts from the tokenizer's ``<s>`` (the task's convention), not the ``</s> <s>`` of the
released checkpoints. Without ``init.path`` the preset trains from random weights.

Data: offline, the Python standard library's docstrings (PEP 257: the body is the document,
the summary line the target; modules held out for evaluation); ``--config.data.source=tfds``
reads ``cnn_dailymail`` (``--config.data.tfds_name=xsum`` for XSum). Evaluation decodes
``eval.decode_batches`` batches (greedy, or ``eval.num_beams``) and reports ROUGE-1/2/L beside
the lead baseline's (the document's first sentences).
"""

from zoo.training.config import base_config, choose, config_args

BART = ("bart-base", "bart-large", "mbart-large-cc25")
ARGS = config_args("t5", *BART, "smoke", "recipe")  # the `:arg` choices; the first is default


def get_config(arg=None):
  arg = choose(arg, ARGS)
  preset = arg if arg.startswith(("t5-", "mt5-", "flan-", "bart-", "mbart-")) else "t5-small"
  c = base_config("summarization", preset)
  c.optim.update(name="adamw", lr=1e-4, schedule="linear", warmup_steps=500,
                 end_lr_ratio=0.0, weight_decay=0.01)
  c.train.update(batch_size=32, num_steps=20_000)
  c.data.update(src_len=512, tgt_len=64)
  c.eval.update(every=2000, num_batches=20, decode_batches=4)

  if arg == "smoke":
    c.model.update(d_model=32, num_heads=4, head_dim=8, num_encoder_layers=1,
                   num_decoder_layers=1, mlp_dim=64, dropout_rate=0.0,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16)
    c.data.update(tokenizer="bpe", vocab_size=600, tokenizer_train_examples=300, src_len=64,
                  tgt_len=24)
    c.train.update(batch_size=8, num_steps=30, log_every=10, checkpoint_every=10)
    c.optim.update(lr=1e-2, schedule="cosine", warmup_steps=5)
    c.eval.update(every=0, num_batches=2, decode_batches=1)
  elif arg in BART:
    c.optim.update(lr=3e-5, warmup_steps=500, weight_decay=0.01)
    c.label_smoothing = 0.1
    c.data.update(src_len=1024, tgt_len=128)
    c.eval.update(num_beams=4, length_penalty=2.0)
  elif arg == "recipe":
    c.data.update(src_len=128, tgt_len=32, tokenizer="sentencepiece")
    c.train.update(batch_size=16, num_steps=300, log_every=25, checkpoint_every=100)
    c.optim.update(lr=1e-3, schedule="cosine", warmup_steps=30, end_lr_ratio=0.1)
    c.eval.update(every=0, num_batches=0, decode_batches=1000)  # every validation batch
  return c
