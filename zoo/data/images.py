"""Image classification batches: resize, crop, normalise; light augmentation on "train".

Fixed-size sources (digits, MNIST, CIFAR) are resized to ``image_size`` (bilinear); training
adds a random crop from the image padded by ``image_size // 8`` pixels on each side, and a
horizontal flip where the dataset allows it (``random_flip``; never for digits, whose mirror
image is another glyph). Variable-size sources (ImageNet) train on Inception-style random
resized crops (8%-100% of the area, aspect 3/4-4/3) with flips and evaluate on the centre crop
of the image resized to ``image_size / 0.875`` on its shorter side. Pixels become
``(x / 255 - mean) / std`` float32; 1-channel images are repeated to 3 channels or RGB
averaged to 1 as ``num_channels`` asks.

Batch: ``images`` ``[B, H, W, C]`` float32 and ``labels`` ``[B]`` int32 (``IGNORE_INDEX`` on
the padding rows of the last eval batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from zoo.data.batch import IGNORE_INDEX
from zoo.data.iteration import Dataset, example_dataset


def as_hwc(image, where: str = "image") -> np.ndarray:
  """``[H, W]`` / ``[H, W, 1 or 3]`` uint8 (floats in [0, 1] are scaled by 255)."""
  x = np.asarray(image)
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3) or min(x.shape[:2]) < 1:
    raise ValueError(
        f"{where} has shape {x.shape}: expected [height, width] or [height, width, channels] "
        "with 1 (grayscale) or 3 (RGB) channels; convert other layouts (e.g. drop alpha) first."
    )
  if x.dtype != np.uint8:
    x = np.clip(
        np.round(x.astype(np.float32) * (255 if x.max() <= 1.0 else 1)), 0, 255
    ).astype(np.uint8)
  return x


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
  if x.shape[:2] == (h, w):
    return x
  img = Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)
  out = np.asarray(img.resize((w, h), Image.BILINEAR))
  return out[..., None] if out.ndim == 2 else out


def _random_resized_crop(x, rng, size: int) -> np.ndarray:
  h, w = x.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(0.08, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
    if 0 < ch <= h and 0 < cw <= w:
      top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
      return _resize(x[top : top + ch, left : left + cw], size, size)
  return _center_crop(x, size)


def _center_crop(x, size: int) -> np.ndarray:
  h, w = x.shape[:2]
  scale = size / 0.875 / min(h, w)
  x = _resize(x, max(size, round(h * scale)), max(size, round(w * scale)))
  h, w = x.shape[:2]
  top, left = (h - size) // 2, (w - size) // 2
  return x[top : top + size, left : left + size]


def _channels(x: np.ndarray, c: int) -> np.ndarray:
  if x.shape[-1] == c:
    return x
  if c == 3:
    return np.repeat(x, 3, axis=-1)
  return np.round(x.astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8)


def channel_stats(values, c: int) -> np.ndarray:
  v = np.asarray(values, np.float32).reshape(-1)
  if len(v) == c:
    return v
  return np.full(c, v.mean(), np.float32)


def preprocess(image, rng, *, size: int, channels: int, mean, std, augment: bool, flip: bool,
               variable_size: bool) -> np.ndarray:
  """One image -> ``[size, size, channels]`` float32 (see the module docstring)."""
  x = _channels(as_hwc(image), channels)
  if variable_size:
    x = _random_resized_crop(x, rng, size) if augment else _center_crop(x, size)
  else:
    x = _resize(x, size, size)
    if augment:
      pad = max(1, size // 8)
      x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
      top, left = rng.integers(2 * pad + 1, size=2)
      x = x[top : top + size, left : left + size]
  if augment and flip and rng.random() < 0.5:
    x = x[:, ::-1]
  return (
      (x.astype(np.float32) / 255.0 - channel_stats(mean, channels))
      / channel_stats(std, channels)
  ).astype(np.float32)


def build(records: Sequence, *, cfg, train: bool, mean, std, flip: bool, variable_size: bool,
          **kwargs) -> Dataset:
  """``records[i] = (image, label)`` -> image-classification rows."""
  size, channels = cfg.image_size, cfg.num_channels
  if channels not in (1, 3):
    raise ValueError(f"num_channels must be 1 or 3; got {channels}.")
  opts = dict(size=size, channels=channels, mean=mean, std=std, augment=train and cfg.augment,
              flip=flip, variable_size=variable_size)

  def make(record, rng):
    image, label = records[record]
    try:
      x = preprocess(image, rng, **opts)
    except ValueError as e:
      raise ValueError(f"record {record}: {e}") from None
    return {"images": x, "labels": np.int32(label)}

  def empty():
    return {
        "images": np.zeros((size, size, channels), np.float32), "labels": np.int32(IGNORE_INDEX)
    }

  return example_dataset(make_example=make, empty_example=empty, **kwargs)
