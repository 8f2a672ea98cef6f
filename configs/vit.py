"""ViT image classification (task ``image_classification``), Dosovitskiy et al. 2021.

``--config configs/vit.py:<arg>``: ``vit-b16`` / ``vit-l16`` / ``vit-h14`` (the paper's
from-scratch recipe: Adam b2 0.999 with decoupled weight decay 0.1, 10k warm-up steps, cosine,
clipping at 1; images resized to the preset's 224 px), ``deit-{tiny,small,base}-distilled-
patch16-224`` (DeiT's distillation token and two heads under the ViT recipe above, not DeiT's;
the loss reads the mean of the two heads, there is no teacher), ``smoke``, or ``finetune``
(the checkpoint ``--config.init.path`` names — a ViT or DeiT folder — at 48 px with fresh
heads).

Data: offline, scikit-learn's 8x8 handwritten digits; ``--config.data.source=tfds`` reads
``cifar10`` (any TFDS image dataset via ``--config.data.tfds_name``).
"""

from zoo.training.config import base_config, choose, config_args

ARGS = config_args("vit", "smoke", "finetune")  # the `:arg` choices; the first is the default


def get_config(arg=None):
  arg = choose(arg, ARGS)
  preset = "vit-b16" if arg in ("smoke", "finetune") else arg
  c = base_config("image_classification", preset)
  c.optim.update(lr=3e-3, schedule="cosine", end_lr_ratio=0.0, warmup_steps=10_000,
                 b2=0.999, weight_decay=0.1, clip_norm=1.0)
  c.train.update(batch_size=512, num_steps=100_000)
  c.data.image_size = 224
  c.eval.num_batches = 0  # the whole validation split

  if arg == "smoke":
    c.model.update(patch_size=4, d_model=32, num_heads=4, num_layers=2, mlp_dim=64)
    # Random resized crops of 8x8 digits leave too little to learn from in 60 steps.
    c.data.update(image_size=8, augment=False)
    c.train.update(batch_size=16, num_steps=60, log_every=10, checkpoint_every=20)
    c.optim.update(lr=3e-3, warmup_steps=3, weight_decay=0.0)
    c.eval.update(every=0, num_batches=2)
  elif arg == "finetune":
    # Fine-tune the checkpoint --config.init.path names on the offline digits at this
    # resolution (positions resized) with a fresh 10-class head (big_vision's recipe: SGD
    # with momentum, no weight decay, short warm-up, cosine).
    c.data.update(image_size=48, augment=False)
    c.train.update(batch_size=32, num_steps=150, log_every=25, checkpoint_every=75)
    c.optim.update(name="sgd", momentum=0.9, lr=0.03, warmup_steps=10, weight_decay=0.0)
    c.eval.update(every=75, num_batches=0)
  return c
