"""ViT attention maps over an image's patches, and attention rollout (Abnar & Zuidema 2020).

Per layer and head, the ``[L, L]`` self-attention weights over the tokens ([CLS] first when the
model has one, then the ``h x w`` patches in row-major order), and the query row of [CLS] laid
on the patch grid. Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in
Transformers", 2020) follows the information through the layers: each layer's weights are
averaged over heads, the identity is added for the residual connection, the rows are
renormalised to sum to 1, and the layers are multiplied, ``R = A_l ... A_1``. The [CLS] row of
``R`` (the mean row over the patches for a ViT without a class token) says how much each patch
contributed to the token the head reads; it is drawn over the image.

The image is ``--image`` (a PNG / JPEG, or an ``.npy`` ``[H, W(, C)]`` array) or, by default,
validation image ``--image-index`` of the offline digits, resized to ``--image-size`` (default
the model's ``image_size``) and normalised with the checkpoint's ``preprocessor_config.json``
mean and std (0.5 / 0.5, the digits' and Hugging Face ViT's default, without one).
"""

from __future__ import annotations

import os

import numpy as np

from zoo.analysis import common
from zoo.analysis.attention_weights import attention_weights, select


def rollout(weights: list[np.ndarray]) -> np.ndarray:
  """Attention rollout of one example: ``A_l ... A_1`` with ``A = rownorm(mean_heads(W) + I)``.

  Args:
    weights: per layer (first to last) ``[N, L, L]`` attention weights whose rows sum to 1.

  Returns:
    ``[L, L]`` float64; row ``i`` is how much each input token flows into output token ``i``
    (rows sum to 1).
  """
  if not weights:
    raise common.AnalysisError("rollout needs at least one layer of attention weights.")
  length = weights[0].shape[-1]
  out = np.eye(length)
  for w in weights:
    a = np.asarray(w, np.float64).mean(axis=0) + np.eye(length)
    a /= a.sum(axis=-1, keepdims=True)
    out = a @ out
  return out


def _read_image(path: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise common.AnalysisError(f"--image {path} is not a file; give a PNG / JPEG or an .npy.")
  if path.endswith(".npy"):
    return np.load(path)
  from PIL import Image

  try:
    with Image.open(path) as img:
      return np.asarray(img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode))
  except OSError as e:
    raise common.AnalysisError(f"--image {path} cannot be read as an image: {e}") from e


def _stats(checkpoint: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of the checkpoint's preprocessor_config.json, else 0.5 / 0.5."""
  from zoo.data.images import channel_stats
  from zoo.pretrained.checkpoint_io import read_json

  pre = {}
  if os.path.isdir(checkpoint):
    pre = read_json(os.path.join(checkpoint, "preprocessor_config.json"), missing_ok=True)
  mean, std = pre.get("image_mean", (0.5,)), pre.get("image_std", (0.5,))
  return channel_stats(mean, channels), channel_stats(std, channels)


def load_image(
    config, checkpoint: str, image: str | None, image_index: int, image_size: int | None
) -> tuple[np.ndarray, np.ndarray, str]:
  """``(model input [1, S, S, C] float32, picture [S, S, C] in [0, 1], description)``.

  Raises:
    AnalysisError: an unreadable file, an index out of range, a size that is not a multiple
      of the patch size, or an image of another layout.
  """
  from zoo.data import images as images_lib

  size = config.image_size if image_size is None else image_size
  p = config.patch_size
  if size < p or size % p:
    fit = max(size // p, 1) * p
    raise common.AnalysisError(
        f"--image-size {size} is not a multiple of the model's patch_size={p}; use "
        f"{fit} or {fit + p} (the model's own size is {config.image_size})."
    )
  if image is None:
    from zoo.data.offline import image_records

    records, _ = image_records(None, "validation", 0.1)
    if not 0 <= image_index < len(records):
      raise common.AnalysisError(
          f"--image-index {image_index} is out of range: the offline digits' validation split "
          f"has {len(records)} images (0..{len(records) - 1})."
      )
    raw, label = records[image_index]
    where = f"offline digits validation image {image_index} (label {label})"
  else:
    raw, where = _read_image(image), image
  channels = config.num_channels
  mean, std = _stats(checkpoint, channels)
  try:
    x = images_lib.preprocess(raw, None, size=size, channels=channels, mean=mean, std=std,
                              augment=False, flip=False, variable_size=False)
  except ValueError as e:
    raise common.AnalysisError(f"--image {where}: {e}") from e
  picture = np.clip(x * std + mean, 0.0, 1.0)
  return x[None], picture, where


def token_labels(grid_h: int, grid_w: int, num_prefix: int) -> list[str]:
  """The prefix tokens (``[CLS]``, DeiT's ``[DIST]``), then ``r,c`` of every patch in row-major
  order."""
  prefix = ["[CLS]", "[DIST]"][: int(num_prefix)]
  return prefix + [f"{r},{c}" for r in range(grid_h) for c in range(grid_w)]


def run(model, params, *, checkpoint: str, image: str | None = None,
        image_index: int = 0, image_size: int | None = None, layer: int | None = None,
        head: int | None = None, all_layers: bool = False) -> dict:
  """Maps and rollout of one image through a loaded ViT (see :func:`attention_maps.run`)."""
  cfg = model.config
  x, picture, where = load_image(cfg, checkpoint, image, image_index, image_size)
  weights = attention_weights(model, params, x)
  num_layers, num_heads = len(weights), weights[0][1].shape[1]
  chosen, heads = select(num_layers, num_heads, layer, head, all_layers)
  grid_h, grid_w = x.shape[1] // cfg.patch_size, x.shape[2] // cfg.patch_size
  skip = cfg.num_prefix_tokens  # [CLS] (row 0, the reader) and DeiT's distillation token
  through = max(chosen)
  rolled = rollout([w[0] for _, w in weights[: through + 1]])
  reader = rolled[0, skip:] if skip else rolled[:, :].mean(axis=0)
  logits = np.asarray(model.apply({"params": params.get("params", params)}, x))[0]

  def grid(row):
    return np.asarray(row[skip:]).reshape(grid_h, grid_w).round(4)

  return dict(
      checkpoint=checkpoint, family=type(model).__name__, image=where, image_size=int(x.shape[1]),
      grid=[grid_h, grid_w], class_token=cfg.class_token, tokens=token_labels(grid_h, grid_w, skip),
      num_layers=num_layers, num_heads=num_heads,
      prediction=int(logits.argmax()) if cfg.num_classes else None,  # K = 0: features
      picture=picture.round(3),
      layers=[
          dict(layer=i, name=weights[i][0],
               heads={str(h): weights[i][1][0, h].round(4) for h in heads},
               cls_grid={str(h): grid(weights[i][1][0, h, 0] if skip
                                      else weights[i][1][0, h].mean(axis=0)) for h in heads})
          for i in chosen
      ],
      rollout=dict(through_layer=through, matrix=rolled.round(4),
                   cls_grid=np.asarray(reader).reshape(grid_h, grid_w).round(4)),
  )


def _overlay(ax, picture, heat, title):
  h, w = picture.shape[:2]
  ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray",
            extent=(0, w, h, 0))
  ax.imshow(np.asarray(heat), cmap="inferno", alpha=0.55, extent=(0, w, h, 0),
            interpolation="nearest")
  ax.set_title(title, fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])


def plot(numbers: dict):
  """Row 0: the image, its rollout and each head's [CLS] row on the patches (last layer
  shown); then one row per layer shown of every head's ``[L, L]`` map."""
  plt = common.pyplot()
  rows = numbers["layers"]
  heads = list(rows[0]["heads"])
  ncols = max(len(heads), 2 + len(heads) if len(heads) <= 6 else 2)
  nrows = 1 + len(rows)
  fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.7 * nrows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  picture = np.asarray(numbers["picture"])
  reader = "[CLS]" if numbers["class_token"] else "mean patch"
  ax = axes[0, 0]
  ax.axis("on")
  ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray")
  pred = numbers.get("prediction")
  ax.set_title("input" + (f" (predicted {pred})" if pred is not None else ""), fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])
  roll = numbers["rollout"]
  axes[0, 1].axis("on")
  _overlay(axes[0, 1], picture, roll["cls_grid"],
           f"rollout, layers 0..{roll['through_layer']}: {reader} row")
  if 2 + len(heads) <= ncols:
    last = rows[-1]
    for j, h in enumerate(heads):
      axes[0, 2 + j].axis("on")
      _overlay(axes[0, 2 + j], picture, last["cls_grid"][h],
               f"layer {last['layer']} head {h}: {reader} row")
  n = len(numbers["tokens"])
  for r, row in enumerate(rows, start=1):
    for j, h in enumerate(heads):
      ax = axes[r, j]
      ax.axis("on")
      ax.imshow(np.asarray(row["heads"][h]), cmap="viridis", vmin=0)
      ax.set_title(f"layer {row['layer']} head {h} ({n} tokens)", fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
  fig.suptitle(f"{numbers['family']} {numbers['checkpoint']}: {numbers['image']}; maps: rows = "
               "queries, columns = keys", fontsize=9)
  fig.tight_layout()
  return fig
