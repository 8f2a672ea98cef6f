"""BERT extractive question answering (task ``question_answering``).

``--config configs/bert_qa.py:<arg>``: ``bert-base`` / ``bert-large`` (the paper's SQuAD
recipe: lr 3e-5, batch 32, 2 epochs' worth of steps, windows of 384 with a stride of 128),
``smoke``, or ``minilm`` (fine-tune all-MiniLM-L6-v2) and ``minilm-scratch`` (its architecture
from random weights). Any run starts from released weights with ``--config.init.path``.

Data: offline, questions about the Python standard library's own docstrings (answers are exact
spans, held-out modules for evaluation; ``zoo/data/README.md``); ``--config.data.source=tfds``
reads ``squad/v1.1`` (``--config.data.tfds_name=squad/v2.0 --config.data.null_threshold=0.0``
for SQuAD 2.0, where an example may have no answer).
"""

from zoo.training.config import base_config, choose, config_args, minilm_recipe

# the `:arg` choices; the first is the default
ARGS = config_args("bert", "smoke", "minilm", "minilm-scratch")


def get_config(arg=None):
  arg = choose(arg, ARGS)
  preset = arg if arg.startswith("bert-") else "bert-base"
  c = base_config("question_answering", preset)
  c.optim.update(lr=3e-5, schedule="linear", end_lr_ratio=0.0, warmup_steps=550,
                 weight_decay=0.01)
  c.train.update(batch_size=32, num_steps=5500)
  c.data.update(seq_len=384, doc_stride=128)
  c.eval.num_batches = 0  # the whole validation split: every window of every example

  if arg == "smoke":
    c.model.update(d_model=32, num_heads=4, num_layers=2, mlp_dim=64, max_len=64,
                   dropout_rate=0.0)
    c.data.update(seq_len=64, doc_stride=16, tokenizer="bpe", vocab_size=1000,
                  tokenizer_train_examples=2000)
    c.train.update(batch_size=16, num_steps=60, log_every=10, checkpoint_every=30)
    c.optim.update(lr=3e-3, warmup_steps=5)
    c.eval.update(every=0, num_batches=4)
  elif arg.startswith("minilm"):
    minilm_recipe(c, scratch=arg == "minilm-scratch")
    c.data.update(seq_len=128, doc_stride=32)  # contexts of a few docstrings: 1-4 windows
    # Spans are learned more slowly than classes: 500 steps (200 end at EM 39 / F1 56).
    c.train.update(num_steps=500, log_every=50, checkpoint_every=250)
    c.eval.update(every=250)
  return c
