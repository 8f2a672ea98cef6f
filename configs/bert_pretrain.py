"""BERT pretraining: masked language modelling + next-sentence prediction (task ``mlm_nsp``).

``--config configs/bert_pretrain.py:<arg>``: ``bert-base`` / ``bert-large`` (Devlin et al.
2019: AdamW lr 1e-4, weight decay 0.01, 10k warm-up steps then linear decay, 128-token
sequences) or ``smoke``.

Data: offline, sentence pairs from the standard library's docstrings; ``--config.data.source=
tfds`` reads ``wikipedia``.
"""

from zoo.training.config import base_config, choose, config_args

ARGS = config_args("bert", "smoke")  # the `:arg` choices; the first is the default


def get_config(arg=None):
  arg = choose(arg, ARGS)
  preset = "bert-base" if arg == "smoke" else arg
  c = base_config("mlm_nsp", preset)
  c.optim.update(lr=1e-4, schedule="linear", end_lr_ratio=0.0, warmup_steps=10_000,
                 weight_decay=0.01)
  c.train.update(batch_size=256, num_steps=1_000_000)
  c.data.seq_len = 128

  if arg == "smoke":
    c.model.update(d_model=32, num_heads=4, num_layers=2, mlp_dim=64, max_len=32,
                   dropout_rate=0.0)
    c.data.seq_len = 32
    c.train.update(batch_size=8, num_steps=30, log_every=10, checkpoint_every=10)
    c.optim.update(lr=5e-3, warmup_steps=3)
    c.eval.update(every=0, num_batches=2)
  return c
