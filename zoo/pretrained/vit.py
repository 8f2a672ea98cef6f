"""Hugging Face ViT (``ViTModel``, ``ViTForImageClassification``) <-> :class:`zoo.models.vit.ViT`.

===============================================  =============================================
Hugging Face (``vit.`` prefix in the classifier)  zoo
===============================================  =============================================
embeddings.patch_embeddings.projection.weight    embedding/kernel [P, P, C, D]
  [D, C, P, P] (a PyTorch conv, NCHW)            (a flax conv, NHWC: transpose 2, 3, 1, 0)
embeddings.patch_embeddings.projection.bias      embedding/bias
embeddings.cls_token [1, 1, D]                   cls [1, 1, D]
embeddings.position_embeddings [1, 1+h*w, D]     pos_embedding [1, 1+h*w, D]
encoder.layer.i.layernorm_before                 encoder/layers_i/attn_norm
encoder.layer.i.attention.attention.q/k/v        encoder/layers_i/attn/{query,key,value}
encoder.layer.i.attention.output.dense           encoder/layers_i/attn/out
encoder.layer.i.layernorm_after                  encoder/layers_i/mlp_norm
encoder.layer.i.intermediate.dense               encoder/layers_i/mlp/wi
encoder.layer.i.output.dense                     encoder/layers_i/mlp/wo
layernorm                                        encoder_norm
pooler.dense (ViTModel) [R, D]                   pre_logits [D, R] (representation_size=R)
classifier [K, D]                                head [D, K]
===============================================  =============================================

``ViTModel`` becomes a zoo ViT with ``num_classes=0`` whose output is Hugging Face's
``pooler_output`` (or the normalised [CLS] state when the checkpoint has no pooler).

Loading at another ``image_size`` (``from_pretrained(path, image_size=384)``) resizes the
position table the way ``transformers``' ``interpolate_pos_encoding`` and timm do: PyTorch's
bicubic (a = -0.75, half-pixel centres, clamped borders), see :func:`resize_positions`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zoo.layers.positional import bicubic_matrix
from zoo.models.vit import ViTConfig
from zoo.pretrained import keymap as km

CONFIG = ViTConfig  # the zoo family this converter reads and writes
MODEL_TYPE = "vit"
ARCHITECTURES = ("ViTModel", "ViTForImageClassification")
PREFIX = "vit."
RESIZE_FIELDS = ("image_size",)  # may differ from the checkpoint's: positions are resized

_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """ViT ``config.json`` (and the tensor names, for the optional pooler) -> ViTConfig fields."""
  act = hf.get("hidden_act", "gelu")
  if act not in _ACT_FROM_HF:
    raise ValueError(f"ViT hidden_act {act!r} is not supported; known: {sorted(_ACT_FROM_HF)}.")
  if not hf.get("qkv_bias", True):
    raise ValueError("ViT qkv_bias=false is not supported (zoo's ViT has biases everywhere).")
  if hf.get("pooler_act", "tanh") != "tanh":
    raise ValueError(f"ViT pooler_act={hf['pooler_act']!r} is not supported (only tanh).")
  d = hf.get("hidden_size", 768)
  size, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
  if isinstance(size, (list, tuple)) or isinstance(patch, (list, tuple)):
    if len(set(size if isinstance(size, (list, tuple)) else [size])) > 1:
      raise ValueError(f"non-square ViT image_size {size} is not supported.")
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
  has_pooler = any(k.endswith("pooler.dense.weight") for k in keys)
  classify = arch == "ViTForImageClassification"
  return dict(
      image_size=size,
      patch_size=patch,
      num_channels=hf.get("num_channels", 3),
      d_model=d,
      num_heads=hf.get("num_attention_heads", 12),
      num_layers=hf.get("num_hidden_layers", 12),
      mlp_dim=hf.get("intermediate_size", 3072),
      num_classes=len(hf.get("id2label") or {0: 0, 1: 1}) if classify else 0,
      pool="cls",
      position="learned",
      class_token=True,
      representation_size=(hf.get("pooler_output_size") or d) if has_pooler and not classify else None,
      activation=_ACT_FROM_HF[act],
      norm_eps=hf.get("layer_norm_eps", 1e-12),
      dropout_rate=hf.get("hidden_dropout_prob", 0.0),
      attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.0),
      init_std=hf.get("initializer_range", 0.02),
  )


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`ViTConfig` -> ViT ``config.json`` (classifier, or ``ViTModel`` when no head)."""
  problems = []
  if cfg.position != "learned":
    problems.append(f"position={cfg.position!r} (HF ViT has a learned table)")
  if not cfg.class_token or cfg.pool != "cls":
    problems.append(f"class_token={cfg.class_token}, pool={cfg.pool!r} (HF ViT pools [CLS])")
  if cfg.num_classes and cfg.representation_size is not None:
    problems.append("representation_size with a head (HF's classifier has no pre-logits layer)")
  if problems:
    raise ValueError("this ViTConfig has no Hugging Face ViT equivalent: " + "; ".join(problems) + ".")
  labels = {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)}
  out = {
      "architectures": ["ViTForImageClassification" if cfg.num_classes else "ViTModel"],
      "model_type": MODEL_TYPE,
      "image_size": cfg.image_size,
      "patch_size": cfg.patch_size,
      "num_channels": cfg.num_channels,
      "hidden_size": cfg.d_model,
      "num_attention_heads": cfg.num_heads,
      "num_hidden_layers": cfg.num_layers,
      "intermediate_size": cfg.mlp_dim,
      "hidden_act": _ACT_TO_HF[cfg.activation],
      "layer_norm_eps": cfg.norm_eps,
      "hidden_dropout_prob": cfg.dropout_rate,
      "attention_probs_dropout_prob": cfg.attention_dropout_rate,
      "initializer_range": cfg.init_std if cfg.init_std is not None else 0.02,
      "qkv_bias": True,
      "pooler_act": "tanh",
      "pooler_output_size": cfg.representation_size or cfg.d_model,
  }
  if cfg.num_classes:
    out["id2label"] = labels
    out["label2id"] = {v: int(k) for k, v in labels.items()}
  return out


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  patterns = ["*mask_token"]
  if arch == "ViTForImageClassification":
    patterns.append("*pooler.dense.*")
  return tuple(patterns)


def conv_to_zoo(w: np.ndarray) -> np.ndarray:
  """PyTorch conv ``[D, C, P, P]`` -> flax ``[P, P, C, D]``."""
  return w.transpose(2, 3, 1, 0)


def conv_to_torch(k: np.ndarray) -> np.ndarray:
  return k.transpose(3, 2, 0, 1)


def _dense(src: str, dst: str) -> list[km.Entry]:
  return [km.linear(f"{src}.weight", f"{dst}/kernel"), km.same(f"{src}.bias", f"{dst}/bias")]


def _norm(src: str, dst: str) -> list[km.Entry]:
  return [km.same(f"{src}.weight", f"{dst}/scale"), km.same(f"{src}.bias", f"{dst}/bias")]


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg`` (names as ``arch`` saves them)."""
  n, h = cfg.num_heads, cfg.d_model // cfg.num_heads
  p = "" if arch == "ViTModel" else PREFIX
  e = f"{p}embeddings."
  out = [
      km.tensor(f"{e}patch_embeddings.projection.weight", "embedding/kernel",
                conv_to_zoo, conv_to_torch),
      km.same(f"{e}patch_embeddings.projection.bias", "embedding/bias"),
      km.same(f"{e}cls_token", "cls"),
      km.same(f"{e}position_embeddings", "pos_embedding"),
      *_norm(f"{p}layernorm", "encoder_norm"),
  ]
  for i in range(cfg.num_layers):
    s, z = f"{p}encoder.layer.{i}.", f"encoder/layers_{i}/"
    for name in ("query", "key", "value"):
      out += [
          km.linear_to_heads(f"{s}attention.attention.{name}.weight", f"{z}attn/{name}/kernel", n, h),
          km.heads_bias(f"{s}attention.attention.{name}.bias", f"{z}attn/{name}/bias", n, h),
      ]
    out += [
        km.linear_from_heads(f"{s}attention.output.dense.weight", f"{z}attn/out/kernel", n, h),
        km.same(f"{s}attention.output.dense.bias", f"{z}attn/out/bias"),
        *_norm(f"{s}layernorm_before", f"{z}attn_norm"),
        *_norm(f"{s}layernorm_after", f"{z}mlp_norm"),
        *_dense(f"{s}intermediate.dense", f"{z}mlp/wi"),
        *_dense(f"{s}output.dense", f"{z}mlp/wo"),
    ]
  if cfg.representation_size is not None:
    out += _dense(f"{p}pooler.dense", "pre_logits")
  if cfg.num_classes:
    out += _dense("classifier", "head")
  return out


def describe(cfg) -> str:
  return (
      f"image_size={cfg.image_size}, patch_size={cfg.patch_size}, num_channels="
      f"{cfg.num_channels}, hidden_size={cfg.d_model}, num_attention_heads={cfg.num_heads}, "
      f"intermediate_size={cfg.mlp_dim}"
  )


# ----------------------------------------------------------------------------------------------
# Position tables at another resolution.


def resize_positions(
    table: np.ndarray, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int = 1
) -> np.ndarray:
  """Resize a ``[1, prefix + h*w, D]`` position table to another patch grid.

  The first ``num_prefix`` rows (the class token's) are kept; the ``h x w`` grid is resized
  with PyTorch's bicubic, so a zoo model loaded at a new size computes what
  ``transformers``' ``interpolate_pos_encoding=True`` (and timm) compute at that size.
  """
  if tuple(old_grid) == tuple(new_grid):
    return table
  d = table.shape[-1]
  grid = np.asarray(table[0, num_prefix:], np.float64).reshape(*old_grid, d)
  rows = bicubic_matrix(old_grid[0], new_grid[0])
  cols = bicubic_matrix(old_grid[1], new_grid[1])
  resized = np.einsum("ah,bw,hwd->abd", rows, cols, grid).reshape(1, -1, d)
  return np.concatenate([np.asarray(table[:, :num_prefix], np.float64), resized], axis=1).astype(
      table.dtype
  )


def resize(flat: dict[str, np.ndarray], native, cfg) -> dict[str, np.ndarray]:
  """Adapt params loaded for config ``native`` to ``cfg`` (another ``image_size``)."""
  if "pos_embedding" in flat and native.image_size != cfg.image_size:
    g0, g1 = native.grid_size, cfg.grid_size
    flat = {**flat, "pos_embedding": resize_positions(
        flat["pos_embedding"], (g0, g0), (g1, g1), int(native.class_token))}
  return flat
