"""GPT language modelling (task ``lm``).

``--config configs/gpt.py:<arg>`` with ``<arg>`` one of:

* a GPT preset (``gpt2-small`` ... ``gpt2-xl``, ``gpt3-small`` ... ``gpt3-175b``): the
  paper's model, trained from scratch with a nanoGPT-style recipe (AdamW, b2 0.95, weight
  decay 0.1, warm-up + cosine, clipping at 1);
* ``demo``: a 4-layer GPT over a 4,096-token BPE trained on the corpus, that learns Python
  source on a CPU in about five minutes and ends by printing a sample (``make demo``);
* ``smoke``: seconds on a CPU (tests);
* ``finetune``: continue the checkpoint ``--config.init.path`` names (a GPT-2 folder) on the
  offline data with its own tokenizer.

Data: the offline default is the standard library's Python source (byte tokenizer);
``--config.data.source=tfds`` switches to ``--config.data.tfds_name`` (tiny_shakespeare).
"""

from zoo.training.config import base_config, choose, config_args

# The `:arg` choices; the first is the default.
ARGS = config_args("gpt", "demo", "smoke", "finetune")


def get_config(arg=None):
  arg = choose(arg, ARGS)
  preset = "gpt2-small" if arg in ("demo", "smoke", "finetune") else arg
  c = base_config("lm", preset)
  c.optim.update(lr=6e-4, b2=0.95, weight_decay=0.1, warmup_steps=2000, clip_norm=1.0)
  c.train.update(batch_size=64, num_steps=100_000)
  c.data.seq_len = 1024
  c.sample.update(prompt="def ", num_tokens=256)

  if arg == "demo":
    # A byte-level BPE (trained on the training split once, then cached) gives every step more
    # text than bytes would; eval reports bits per byte, comparable across tokenizers. Why these
    # sizes and step counts: BENCHMARKS.md, "How the demo was sized".
    c.data.update(tokenizer="bpe", vocab_size=4096, seq_len=128)
    c.model.update(d_model=128, num_heads=4, num_layers=4, mlp_dim=512, max_len=128)
    c.train.update(batch_size=32, num_steps=280, log_every=20, checkpoint_every=70)
    c.optim.update(lr=3e-3, warmup_steps=40, weight_decay=0.1)
    c.eval.update(every=70, num_batches=5)
    # "def", not "def ": byte-level BPE glues a space to the word after it (" foo"), so a prompt
    # ending in a space asks for a split the training text never has.
    c.sample.update(prompt="def", num_tokens=120)
  elif arg == "smoke":
    c.model.update(d_model=32, num_heads=4, num_layers=2, mlp_dim=64, max_len=32)
    c.data.seq_len = 32
    c.train.update(batch_size=8, num_steps=30, log_every=10, checkpoint_every=10)
    c.optim.update(lr=5e-3, warmup_steps=3)
    c.eval.update(every=0, num_batches=2)
    c.sample.update(num_tokens=0)
  elif arg == "finetune":
    # Continue a GPT-2-format checkpoint (--config.init.path=<folder>) on the offline Python
    # sources with the checkpoint's own BPE tokenizer; the architecture is the checkpoint's.
    c.data.seq_len = 128
    c.train.update(batch_size=16, num_steps=300, log_every=25, checkpoint_every=100)
    c.optim.update(lr=3e-4, warmup_steps=20, weight_decay=0.1)
    c.eval.update(every=100, num_batches=5)
    c.sample.update(prompt="def ", num_tokens=60)
  else:
    c.model.max_len = c.data.seq_len
  return c
