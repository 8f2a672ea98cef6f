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
bicubic (a = -0.75, half-pixel centres, clamped borders), see
:func:`zoo.layers.positional.interpolate_table`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zoo.layers.positional import interpolate_table
from zoo.models.vit import ViTConfig
from zoo.pretrained import keymap as km
from zoo.pretrained.converter import Converter

MODEL_TYPE = "vit"
PREFIX = "vit."

# ViT exports the tanh GELU as "gelu_pytorch_tanh" (BERT, GPT-2: "gelu_new", the same function).
_ACT_TO_HF = {"gelu_tanh": "gelu_pytorch_tanh"}
_LAYER = km.LayerNames(
    attention="attention",
    qkv=("attention.query", "attention.key", "attention.value"),
    out="output.dense",
    attn_norm="layernorm_before",
    mlp_in="intermediate.dense",
    mlp_out="output.dense",
    mlp_norm="layernorm_after",
)


def config_from_hf(
    hf: dict[str, Any], arch: str, keys=(), *, what: str = "ViT", base: str = "ViTModel"
) -> dict[str, Any]:
  """ViT ``config.json`` (and the tensor names, for the optional pooler) -> ViTConfig fields.

  ``what`` names the model in messages and ``base`` is its headless class (DeiT reuses this).
  """
  activation = km.activation_from_hf(hf.get("hidden_act", "gelu"), f"{what} hidden_act")
  if not hf.get("qkv_bias", True):
    raise ValueError(f"{what} qkv_bias=false is not supported (zoo's ViT has biases everywhere).")
  if hf.get("pooler_act", "tanh") != "tanh":
    raise ValueError(f"{what} pooler_act={hf['pooler_act']!r} is not supported (only tanh).")
  d = hf.get("hidden_size", 768)
  size, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
  if isinstance(size, (list, tuple)) or isinstance(patch, (list, tuple)):
    if len(set(size if isinstance(size, (list, tuple)) else [size])) > 1:
      raise ValueError(f"non-square {what} image_size {size} is not supported.")
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
  has_pooler = any(k.endswith("pooler.dense.weight") for k in keys)
  classify = arch != base
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
      representation_size=(
          (hf.get("pooler_output_size") or d) if has_pooler and not classify else None
      ),
      activation=activation,
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
  if cfg.distillation_token:
    problems.append("distillation_token=True (a DeiT: zoo.pretrained.deit exports it)")
  if problems:
    raise ValueError(
        "this ViTConfig has no Hugging Face ViT equivalent: " + "; ".join(problems) + "."
    )
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
      "hidden_act": km.activation_to_hf(cfg.activation, _ACT_TO_HF, "ViT activation"),
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


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg`` (names as ``arch`` saves them)."""
  p = "" if arch == "ViTModel" else PREFIX
  out = backbone_entries(cfg, p)
  if cfg.num_classes:
    out += km.dense("classifier", "head")
  return out


def backbone_entries(cfg, p: str) -> list[km.Entry]:
  """Patch embedding, [CLS], positions, encoder, final norm and pooler under prefix ``p``."""
  n, h = cfg.num_heads, cfg.d_model // cfg.num_heads
  e = f"{p}embeddings."
  out = [
      km.tensor(f"{e}patch_embeddings.projection.weight", "embedding/kernel",
                conv_to_zoo, conv_to_torch),
      km.same(f"{e}patch_embeddings.projection.bias", "embedding/bias"),
      km.same(f"{e}cls_token", "cls"),
      km.same(f"{e}position_embeddings", "pos_embedding"),
      *km.norm(f"{p}layernorm", "encoder_norm"),
  ]
  for i in range(cfg.num_layers):
    out += km.encoder_layer(_LAYER, f"{p}encoder.layer.{i}.", f"encoder/layers_{i}/", n, h)
  if cfg.representation_size is not None:
    out += km.dense(f"{p}pooler.dense", "pre_logits")
  return out


def describe(cfg) -> str:
  return (
      f"image_size={cfg.image_size}, patch_size={cfg.patch_size}, num_channels="
      f"{cfg.num_channels}, hidden_size={cfg.d_model}, num_attention_heads={cfg.num_heads}, "
      f"intermediate_size={cfg.mlp_dim}"
  )


# ----------------------------------------------------------------------------------------------
# Position tables at another resolution.


def resize(flat: dict[str, np.ndarray], native, cfg) -> dict[str, np.ndarray]:
  """Adapt params loaded for config ``native`` to ``cfg`` (another ``image_size``).

  The prefix tokens' rows ([CLS], DeiT's distillation token) are kept and the patch grid
  resized with PyTorch's bicubic, so a zoo model loaded at a new size computes what
  ``transformers``' ``interpolate_pos_encoding=True`` (and timm) compute at that size.
  """
  if "pos_embedding" in flat and native.image_size != cfg.image_size:
    g0, g1 = native.grid_size, cfg.grid_size
    flat = {**flat, "pos_embedding": interpolate_table(
        flat["pos_embedding"], (g0, g0), (g1, g1), num_prefix=native.num_prefix_tokens)}
  return flat


CONVERTER = Converter(
    module=__name__,
    config_cls=ViTConfig,
    model_type=MODEL_TYPE,
    architectures=("ViTModel", "ViTForImageClassification"),
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=describe,
    # Created fresh for another num_classes; the family's heads, DeiT's head_dist included.
    head_params=("head", "head_dist", "pre_logits"),
    resize=resize,  # image_size may differ from the checkpoint's: positions are resized
)
