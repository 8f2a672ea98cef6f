"""BERT token classification (task ``tagging``: named entities, parts of speech).

``--config configs/bert_tagging.py:<arg>``: ``bert-base`` / ``bert-large`` (fine-tuning
recipe: lr 5e-5, batch 32, linear decay), ``smoke``, or ``minilm`` (fine-tune
all-MiniLM-L6-v2) and ``minilm-scratch`` (its architecture from random weights). Labels of
padding and special tokens are ``IGNORE_INDEX`` and do not count.

Data: offline, word segmentation of docstring sentences with the spaces removed (B/M/E/S
per character);
``--config.data.source=tfds`` reads ``conll2003`` (NER).
"""

from zoo.training.config import base_config, choose, config_args, minilm_recipe

# the `:arg` choices; the first is the default
ARGS = config_args("bert", "smoke", "minilm", "minilm-scratch")


def get_config(arg=None):
  arg = choose(arg, ARGS)
  preset = arg if arg.startswith("bert-") else "bert-base"
  c = base_config("tagging", preset)
  c.optim.update(lr=5e-5, schedule="linear", end_lr_ratio=0.0, warmup_steps=300,
                 weight_decay=0.01)
  c.train.update(batch_size=32, num_steps=3000)
  c.data.seq_len = 128
  c.eval.num_batches = 0  # the whole validation split

  if arg == "smoke":
    c.model.update(d_model=32, num_heads=4, num_layers=2, mlp_dim=64, max_len=32,
                   dropout_rate=0.0)
    c.data.seq_len = 32
    c.train.update(batch_size=8, num_steps=30, log_every=10, checkpoint_every=10)
    c.optim.update(lr=3e-3, warmup_steps=3)
    c.eval.update(every=0, num_batches=2)
  elif arg.startswith("minilm"):
    minilm_recipe(c, scratch=arg == "minilm-scratch")
  return c
