"""BERT sequence classification (task ``classification``).

``--config configs/bert_classify.py:<arg>``: ``bert-base`` / ``bert-large`` (the paper's
fine-tuning recipe: lr 2e-5, batch 32, linear decay after 10% warm-up), ``smoke``, or
``minilm`` (fine-tune all-MiniLM-L6-v2) and ``minilm-scratch`` (its architecture from random
weights). Any run starts from released weights with ``--config.init.path=<checkpoint>``.

Data: offline, docstring topic (which standard-library package a docstring comes from);
``--config.data.source=tfds`` reads ``glue/sst2``.
"""

from zoo.training.config import base_config, choose, config_args, minilm_recipe

# the `:arg` choices; the first is the default
ARGS = config_args("bert", "smoke", "minilm", "minilm-scratch")


def get_config(arg=None):
  arg = choose(arg, ARGS)
  preset = arg if arg.startswith("bert-") else "bert-base"
  c = base_config("classification", preset)
  c.optim.update(lr=2e-5, schedule="linear", end_lr_ratio=0.0, warmup_steps=600,
                 weight_decay=0.01)
  c.train.update(batch_size=32, num_steps=6000)
  c.data.seq_len = 128
  c.eval.num_batches = 0  # the whole validation split

  if arg == "smoke":
    c.model.update(d_model=32, num_heads=4, num_layers=2, mlp_dim=64, max_len=32,
                   dropout_rate=0.0)
    # Topics show in words: a small BPE vocabulary learns them far sooner than bytes.
    c.data.update(seq_len=32, tokenizer="bpe", vocab_size=1000, tokenizer_train_examples=2000)
    c.train.update(batch_size=16, num_steps=150, log_every=10, checkpoint_every=50)
    c.optim.update(lr=3e-3, warmup_steps=5)
    c.eval.update(every=0, num_batches=2)
  elif arg.startswith("minilm"):
    minilm_recipe(c, scratch=arg == "minilm-scratch")
  return c
