"""Original ViT ``.npz`` checkpoints (google-research/vision_transformer, big_vision) -> zoo.

The file is a flat ``np.savez`` of the flax param tree with ``/``-joined names. The config is
read off the shapes (no config file exists). vision_transformer names::

  embedding/kernel [P, P, C, D], embedding/bias       zoo embedding/{kernel,bias}
  cls [1, 1, D]                                        cls
  Transformer/posembed_input/pos_embedding [1, L, D]   pos_embedding
  Transformer/encoderblock_i/LayerNorm_0               encoder/layers_i/attn_norm
  Transformer/encoderblock_i/MultiHeadDotProductAttention_1/{query,key,value,out}
                                                       encoder/layers_i/attn/... (same layout)
  Transformer/encoderblock_i/LayerNorm_2               encoder/layers_i/mlp_norm
  Transformer/encoderblock_i/MlpBlock_3/Dense_0, _1    encoder/layers_i/mlp/wi, wo
  Transformer/encoder_norm                             encoder_norm
  pre_logits (optional), head                          pre_logits, head

Newer big_vision files use ``MultiHeadDotProductAttention_0`` / ``LayerNorm_1`` /
``MlpBlock_0``, a top-level ``pos_embedding`` without a class-token row (the class token
gets no position embedding there: a zero row is inserted) and possibly one stacked
``Transformer/encoderblock`` for scanned layers; those names are rewritten to the ones
above first, and messages use the rewritten names.

Both codebases use flax's default ``nn.gelu``, which is the tanh approximation, and LayerNorm
epsilon 1e-6: those are the defaults here (override with ``activation="gelu"``).
"""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np

from zoo import registry
from zoo.models.vit import ViT, ViTConfig
from zoo.pretrained import assemble
from zoo.pretrained import keymap as km
from zoo.pretrained import vit as vit_hf

_BLOCK = "Transformer/encoderblock_{}/"
_RENAMES = (  # big_vision -> vision_transformer names inside an encoder block
    ("MultiHeadDotProductAttention_0/", "MultiHeadDotProductAttention_1/"),
    ("LayerNorm_1/", "LayerNorm_2/"),
    ("MlpBlock_0/", "MlpBlock_3/"),
)


class NpzStore:
  """The arrays of an ``.npz``, under vision_transformer names."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      what = "is a folder" if os.path.isdir(path) else "does not exist"
      raise FileNotFoundError(
          f"{path} {what}: a ViT checkpoint ending in .npz must be a file (np.savez of the "
          "flax params); check the path, or give a Hugging Face folder, a zoo checkpoint "
          "folder or a train.py workdir instead."
      )
    try:
      with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      why = str(e).split(". ")[0].rstrip(".")  # numpy's advice (allow_pickle=...) does not apply
      raise ValueError(
          f"{path} is not a readable .npz archive (np.load: {why}); download or save it again "
          "(np.savez of the flax params)."
      ) from e
    self.arrays = self._normalise(arrays)

  @staticmethod
  def _normalise(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in arrays.items():
      if k.startswith("Transformer/encoderblock/"):  # scanned: [L, ...] stacked
        rest = k[len("Transformer/encoderblock/") :]
        for i in range(v.shape[0]):
          out[_BLOCK.format(i) + rest] = v[i]
      else:
        out[k] = v
    if "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel" in out:
      renamed = {}
      for k, v in out.items():
        if k.startswith("Transformer/encoderblock_"):
          for old, new in _RENAMES:
            k = k.replace(old, new)
        renamed[k] = v
      out = renamed
    for old in ("pos_embedding", "Transformer/pos_embedding"):
      if old in out:
        table = out.pop(old)
        if "cls" in out:  # big_vision adds positions before prepending [cls]: its row is 0
          table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
        out["Transformer/posembed_input/pos_embedding"] = table
    return out

  def keys(self):
    return list(self.arrays)

  def __contains__(self, key):
    return key in self.arrays

  def shape(self, key):
    return tuple(self.arrays[key].shape)

  def get(self, key):
    return self.arrays[key]


def config_fields(store: NpzStore, where: str) -> dict:
  """ViTConfig fields read off the tensor shapes."""
  need = ["embedding/kernel", "Transformer/encoder_norm/scale",
          _BLOCK.format(0) + "MultiHeadDotProductAttention_1/query/kernel",
          _BLOCK.format(0) + "MlpBlock_3/Dense_0/kernel"]
  for k in need:
    if k not in store:
      raise ValueError(
          f"{where} lacks tensor {k!r}: not a vision_transformer / big_vision ViT checkpoint "
          f"(it has {sorted(store.keys())[:8]}...)."
      )
  p, _, c, d = store.shape("embedding/kernel")
  _, n, _ = store.shape(_BLOCK.format(0) + "MultiHeadDotProductAttention_1/query/kernel")
  layers = {
      int(m.group(1))
      for k in store.keys()
      if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))
  }
  class_token = "cls" in store
  fields = dict(
      patch_size=p,
      num_channels=c,
      d_model=d,
      num_heads=n,
      num_layers=max(layers) + 1,
      mlp_dim=store.shape(_BLOCK.format(0) + "MlpBlock_3/Dense_0/kernel")[1],
      num_classes=store.shape("head/kernel")[1] if "head/kernel" in store else 0,
      representation_size=(
          store.shape("pre_logits/kernel")[1] if "pre_logits/kernel" in store else None
      ),
      class_token=class_token,
      pool="cls" if class_token else "mean",
      activation="gelu_tanh",  # flax's nn.gelu default (approximate=True)
      norm_eps=1e-6,
  )
  pos = "Transformer/posembed_input/pos_embedding"
  if pos in store:
    rows = store.shape(pos)[1] - int(class_token)
    g = int(round(rows**0.5))
    if g * g != rows:
      raise ValueError(f"{where}: {pos} has {rows} patch rows, not a square grid.")
    fields.update(position="learned", image_size=g * p)
  else:
    raise ValueError(
        f"{where} has no position table ({pos}); only learned positions are supported."
    )
  return fields


def entries(cfg) -> list[km.Entry]:
  """vision_transformer names <-> zoo ViT params: the flax layouts already agree."""
  out = [
      km.same("embedding/kernel", "embedding/kernel"),
      km.same("embedding/bias", "embedding/bias"),
      km.same("Transformer/posembed_input/pos_embedding", "pos_embedding"),
      km.same("Transformer/encoder_norm/scale", "encoder_norm/scale"),
      km.same("Transformer/encoder_norm/bias", "encoder_norm/bias"),
  ]
  if cfg.class_token:
    out.append(km.same("cls", "cls"))
  for i in range(cfg.num_layers):
    s, z = _BLOCK.format(i), f"encoder/layers_{i}/"
    pairs = [("LayerNorm_0", "attn_norm"), ("LayerNorm_2", "mlp_norm")]
    out += [km.same(f"{s}{a}/{w}", f"{z}{b}/{v}")
            for a, b in pairs for w, v in (("scale", "scale"), ("bias", "bias"))]
    for name in ("query", "key", "value", "out"):
      for w in ("kernel", "bias"):
        out.append(km.same(f"{s}MultiHeadDotProductAttention_1/{name}/{w}", f"{z}attn/{name}/{w}"))
    for a, b in (("Dense_0", "wi"), ("Dense_1", "wo")):
      for w in ("kernel", "bias"):
        out.append(km.same(f"{s}MlpBlock_3/{a}/{w}", f"{z}mlp/{b}/{w}"))
  for name in (["pre_logits"] if cfg.representation_size is not None else []) + (
      ["head"] if cfg.num_classes else []
  ):
    out += [km.same(f"{name}/kernel", f"{name}/kernel"), km.same(f"{name}/bias", f"{name}/bias")]
  return out


def read(path: str, *, strict: bool = True, names=()) -> assemble.Weights:
  """A ViT ``.npz`` -> its weights and config (``image_size=`` later resizes positions)."""
  store = NpzStore(path)
  family = registry.family_of(ViTConfig)
  assemble.check_names(family, names)
  native = assemble.make_config(family, config_fields(store, path), None, {}, path)
  shapes, _ = assemble.param_shapes(ViT(native))
  flat, _ = km.load_entries(
      entries(native), store, shapes, strict=strict, what=path,
      describe=f"the shapes of embedding/kernel and encoderblock_0 ({vit_hf.describe(native)})",
  )
  conv = vit_hf.CONVERTER  # the ViT family's heads and position resizing
  return assemble.Weights(native, flat, path, heads=conv.head_params, resize=conv.resize)
