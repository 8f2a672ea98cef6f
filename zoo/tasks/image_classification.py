"""Image classification (ViT): one label per image.

Data: images with a label (offline: scikit-learn's 8x8 handwritten digits, or a folder of
class sub-folders; TFDS: ``cifar10``, ``mnist``, ``imagenet2012`` ...), resized to
``image_size``, normalised by ``mean`` / ``std`` (the dataset's, or a checkpoint's
``preprocessor_config.json``), lightly augmented on "train". Batch: ``images [B, H, W, C]``
float32, ``labels [B]``. Metrics: loss, accuracy, macro-F1; throughput in images.
"""

from __future__ import annotations

import os

from zoo import registry
from zoo.data import offline
from zoo.data import tfds_sources as tfds_src
from zoo.tasks import base
from zoo.tasks.classification import Classification


class ImageClassification(Classification):
  """ViT-style classification of ``images [B, H, W, C]``."""

  name = "image_classification"
  unit = "images"

  def data_defaults(self):
    return {
        "tfds_name": "cifar10", "image_size": 32, "num_channels": 3, "augment": True,
        "random_flip": None, "mean": None, "std": None,
    }

  def records(self, cfg, split):
    if cfg.source == "offline":
      recs, names = offline.image_records(cfg.path, split, cfg.offline_eval_fraction)
    else:
      recs, names = tfds_src.image_records(cfg, split)
    return recs, {"label_names": names}

  def texts(self, record):
    return ()

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import images as image_data  # noqa: PLC0415 - Grain only once data is built

    entry = tfds_src.spec(cfg.tfds_name) if cfg.source == "tfds" else {"flip": False}
    mean = cfg.mean if cfg.mean is not None else entry.get("mean", (0.5,))
    std = cfg.std if cfg.std is not None else entry.get("std", (0.5,))
    flip = cfg.random_flip if cfg.random_flip is not None else entry.get("flip", True)
    names, c = meta["label_names"], cfg.num_channels
    info.update(num_classes=len(names), label_names=names, image_size=cfg.image_size,
                num_channels=c, mean=tuple(image_data.channel_stats(mean, c).tolist()),
                std=tuple(image_data.channel_stats(std, c).tolist()))
    return image_data.build(records, cfg=cfg, train=train, mean=mean, std=std, flip=flip,
                            variable_size=entry.get("variable_size", False), **common)

  def model_overrides(self, info):
    out = {}
    if base.num_labels(info):
      out["num_classes"] = base.num_labels(info)
    for key in ("image_size", "num_channels"):
      if info.get(key):
        out[key] = int(info[key])
    return out

  def units(self, shapes):
    return shapes["images"][0]

  def checkpoint_data(self, data_cfg, path):
    """The checkpoint's normalisation (``preprocessor_config.json``) where the data sets none."""
    if not os.path.isdir(path):
      return
    from zoo.pretrained import checkpoint_io  # noqa: PLC0415 - only when fine-tuning

    pre = checkpoint_io.read_json(
        os.path.join(path, "preprocessor_config.json"), missing_ok=True)
    for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
      if data_cfg.get(ours) is None and pre.get(theirs) is not None:
        data_cfg[ours] = tuple(pre[theirs])


registry.register_task(ImageClassification)
